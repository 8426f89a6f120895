"""What the rest of the program asks of a spool, whichever database keeps it.

Both spools implement it: SQLite's (sqlite/store.py, one file) and PostgreSQL's (pg/store.py,
shared by several gateways), each a BaseSpool (base.py) with its own statements and
connections. smtp, delivery, status and the queue commands type against this and never see a
connection. Every method that writes returns only once what it wrote is durable: a 250 is a
promise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from gateway.spool.budget import Trip
from gateway.spool.console import Action, ConsoleSearch, Day, FoundLine, Hourly
from gateway.spool.rows import (
    Accepted,
    DayLimits,
    Delivery,
    DeliveryLine,
    IncomingMessage,
    MessageDetail,
    NewDelivery,
    Overview,
    PendingBounce,
    Result,
    Search,
    Spend,
    SpoolStats,
)
from gateway.spool.states import BounceState, CallbackResult, StatusClass


class SpoolInterface(Protocol):
    # --- lifecycle
    async def start(self, *, recover: bool = True) -> int:
        """Open, creating or upgrading; with `recover` (only for the daemon holding the spool),
        take back the leases a crash left. Returns how many were taken back."""
        ...

    async def stop(self) -> None: ...

    @property
    def healthy(self) -> bool:
        """False while the spool cannot store at all (a shared database out of reach)."""
        ...

    # --- the accept path
    def accept(self, message: IncomingMessage) -> Awaitable[Accepted]:
        """Store a message and its deliveries durably; gives the queue id, with what the commit
        decided: a retransmission not stored again (then the first one's id), repeats kept."""
        ...

    async def foresee(self, deliveries: Sequence[NewDelivery]) -> list[tuple[str, str] | None]:
        """What accepting these deliveries now would decide of each, for people (`preview`):
        ("retransmission", of what), ("suppressed", why: a repeat) or None. Reads only."""
        ...

    # --- the delivery path
    async def lease(self, limit: int, lease_seconds: float) -> list[Delivery]:
        """Up to `limit` due deliveries, each now the caller's for `lease_seconds`."""
        ...

    async def next_due(self) -> float | None: ...

    async def release(self, delivery_ids: Sequence[int]) -> int:
        """Give back leased deliveries that were not sent: due now, no attempt counted.
        Returns how many were still this caller's to give back."""
        ...

    async def record(self, *results: Result) -> None:
        """Attempts' outcomes, each with its event (and a bounce marked if it asks for one),
        in one transaction."""
        ...

    async def purge(self, older_than: float) -> int:
        """Forget messages whose every delivery ended before `older_than`."""
        ...

    # --- bounces
    async def mark_bounce(self, delivery_id: int) -> bool:
        """Owe the sender a DSN for this delivery: False for a null sender or if already owed."""
        ...

    async def pending_bounces(self, limit: int = 50) -> list[PendingBounce]: ...

    async def settle_bounce(
        self, delivery_id: int, state: BounceState, detail: str = ""
    ) -> None: ...

    # --- platform callbacks
    async def record_status(
        self,
        delivery_id: int,
        queue_id: str,
        platform_id: str,
        status: str,
        classify: Callable[[bool], StatusClass],
        max_statuses: int,
    ) -> tuple[CallbackResult, StatusClass]:
        """Keep a callback's status on its delivery, once however often it is repeated;
        `classify` is told whether the delivery's request asked for Kannel status codes."""
        ...

    # --- health, metrics, the operator's queue commands
    async def stats(self) -> SpoolStats: ...

    async def unconfirmed(self) -> int:
        """How many deliveries wait for an operator or a callback to settle them (cheap)."""
        ...

    async def probe_writable(self) -> None:
        """A real write and commit: raises if the spool cannot store right now."""
        ...

    async def show_message(self, queue_id: str) -> MessageDetail | None: ...

    async def retry_message(self, queue_id: str) -> int | None:
        """Make every unfinished or failed delivery due now; None if no such message."""
        ...

    async def drop_message(self, queue_id: str) -> bool: ...

    async def find_deliveries(self, query: Search) -> list[DeliveryLine]:
        """The deliveries that match, newest first, at most `query.limit`."""
        ...

    async def overview(self, *, errors: int = 5) -> Overview:
        """The queue at a glance for the status page, with the `errors` newest failures."""
        ...

    async def picture(self, queue_id: str) -> tuple[str, bytes] | None:
        """(content type, bytes) of a message's picture (domains.NAME.images); None when it
        has none, was refused, or the message is gone."""

    # --- limits (gateway.spool.budget)
    async def release_held(
        self, today: Mapping[str, DayLimits], give_up_after: float, limit: int = 500
    ) -> tuple[int, float | None]:
        """Due held deliveries admitted where their limits (`today`, by domain) have room,
        else held longer, failed once older than `give_up_after`; gives how many were
        admitted and when the next held one is due."""
        ...

    async def recheck_held(self) -> int:
        """Every held delivery due now (the limits changed); how many are held."""
        ...

    async def next_held(self) -> float | None: ...

    async def count_refusal(self, spend: Spend) -> Trip | None:
        """A delivery refused at RCPT by its limit, counted as held back (and as the day's
        trip); gives the trip when its notice is owed."""
        ...

    async def over_limit(self, spend: Spend) -> str | None:
        """Which limit one more delivery like this would exceed now (a read, no lock)."""
        ...

    async def budget_used(self, today: Mapping[str, DayLimits]) -> dict[str, tuple[int, int]]:
        """Each domain's messages and parts so far on its day."""
        ...

    async def notices_owed(self) -> list[Trip]: ...

    async def store_notice(self, trip: Trip, message: IncomingMessage) -> str | None:
        """Store a limit's notice, unless a gateway did already today; gives its queue id."""
        ...

    # --- the console (the status page: spool/console.py)
    async def console_find(self, search: ConsoleSearch) -> list[FoundLine]: ...

    async def console_subject(self, queue_id: str) -> str | None: ...

    async def console_day(self, since: float) -> Day:
        """The deliveries of messages received since `since`, and the routes they took."""
        ...

    async def console_requests(
        self, ids: Sequence[int]
    ) -> dict[int, tuple[str, dict[str, str]]]: ...

    async def console_hourly(self) -> Hourly:
        """Accepted, suppressed, sent and failed per hour, the last 24 hours."""
        ...

    async def console_act(self, action: Action, queue_id: str, who: str) -> int | None:
        """Retry, drop, settle or release (held ones due now, their limits looked at again);
        how many deliveries changed, None if no such message."""
        ...

    async def console_failed(
        self, since: float, until: float, limit: int
    ) -> list[DeliveryLine]: ...

    async def console_retry_failed(self, since: float, until: float, who: str) -> int: ...

    async def console_send_anyway(
        self, queue_id: str, who: str, today: Mapping[str, DayLimits]
    ) -> int | None:
        """Queue a message's held deliveries now over their limits, spending their budget;
        how many, None if no such message."""
        ...

    # --- values kept for the gateways
    async def callback_secret(self) -> str:
        """The secret that signs callback URLs, made (random) the first time it is asked for
        and the same afterwards, for every gateway of the spool."""
        ...
