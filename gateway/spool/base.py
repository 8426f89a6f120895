"""The spool, once for every backend: the SpoolInterface's methods, each a job (jobs.py,
queue_view.py) handed to the backend's link, which runs it in a group commit or on a reader.

A backend (sqlite/, pg/) is its statements (a Dialect) and its link (the connections, the
thread or task that commits); it subclasses BaseSpool only to make those and to say what its
start does besides (the SQLite spool takes back the leases a crash left).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from gateway.errors import BadContent
from gateway.spool import budget, console, held, jobs, media, meta, queue_view, repeats
from gateway.spool.commit import Link, Together
from gateway.spool.console import Action, ConsoleSearch, Day, FoundLine, Hourly
from gateway.spool.dialect import Dialect
from gateway.spool.rows import (
    Accepted,
    DayLimits,
    Delivery,
    DeliveryLine,
    IncomingMessage,
    MessageDetail,
    NewDelivery,
    NewMessage,
    Overview,
    PendingBounce,
    Result,
    Search,
    Spend,
    SpoolStats,
)
from gateway.spool.states import BounceState, CallbackResult, State, StatusClass
from gateway.spool.steps import Job

if TYPE_CHECKING:
    from gateway.spool.interface import SpoolInterface

T = TypeVar("T")


# A counter from a random start: unique within a process for 16 million ids a millisecond, and
# unlikely to meet another run's ids in the same millisecond — without a urandom call per message.
_TAIL = itertools.count(secrets.randbelow(1 << 24))


def new_queue_id(now: float) -> str:
    # Time first so ids sort by arrival, like Postfix queue ids; the tail keeps them unique.
    return f"{int(now * 1000):011X}{next(_TAIL) & 0xFFFFFF:06X}"


class BaseSpool:
    def __init__(self, sql: Dialect, link: Link, clock: Callable[[], float] = time.time) -> None:
        self.sql = sql
        self.link = link
        self.clock = clock
        # One object for every accept: the group commit runs the inserts of a kind together.
        self._insert: Together = functools.partial(jobs.insert, sql)

    @property
    def commits(self) -> int:
        return self.link.commits

    @property
    def healthy(self) -> bool:
        return self.link.healthy

    async def start(self, *, recover: bool = True) -> int:
        """Open, creating or upgrading. A backend whose spool has one owner takes back, with
        `recover`, the leases a crash left (the SQLite spool); returns how many."""
        await self.link.start()
        return 0

    async def stop(self) -> None:
        await self.link.stop()

    # --- the accept path ---------------------------------------------------------------------

    def accept(self, message: IncomingMessage) -> asyncio.Future[Accepted]:
        """Store a message and its deliveries durably; the future gives the queue id.

        A plain future, not a coroutine: on a busy loop every extra step to the 250 (a task
        to start, a shield to pass through) waits its turn behind every other session's."""
        problem = jobs.unstorable(message)
        if problem is not None:
            refused: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
            # For good: the same bytes would be refused again, so a 4xx would be retried forever.
            refused.set_exception(BadContent(problem))
            return refused
        now = self.clock()
        return self.link.submit_together(
            self._insert, NewMessage(new_queue_id(now), now, message), wakes=True
        )

    async def foresee(self, deliveries: Sequence[NewDelivery]) -> list[tuple[str, str] | None]:
        return await self.link.read(lambda: repeats.foresee(self.sql, self.clock(), deliveries))

    # --- the delivery path -------------------------------------------------------------------

    async def lease(self, limit: int, lease_seconds: float) -> list[Delivery]:
        return await self.link.submit(
            lambda: jobs.lease(self.sql, self.clock(), limit, lease_seconds)
        )

    async def next_due(self) -> float | None:
        return await self.link.read(lambda: jobs.next_due(self.sql))

    async def release(self, delivery_ids: Sequence[int]) -> int:
        return await self.link.submit(
            lambda: jobs.release(self.sql, self.clock(), delivery_ids), wakes=True
        )

    async def record(self, *results: Result) -> None:
        # A retry made due (a deferral) is for whoever is free, possibly another gateway.
        await self.link.submit(
            lambda: jobs.record(self.sql, self.clock(), results),
            wakes=any(r.state == State.QUEUED for r in results),
        )

    async def purge(self, older_than: float) -> int:
        """Forget messages whose every delivery ended before `older_than`."""
        return await self.link.submit(lambda: jobs.purge(self.sql, older_than, self.clock()))

    # --- bounces and callbacks ---------------------------------------------------------------

    async def mark_bounce(self, delivery_id: int) -> bool:
        return await self.link.submit(lambda: jobs.mark_bounce(self.sql, delivery_id))

    async def pending_bounces(self, limit: int = 50) -> list[PendingBounce]:
        return await self.link.read(lambda: jobs.pending_bounces(self.sql, limit))

    async def settle_bounce(self, delivery_id: int, state: BounceState, detail: str = "") -> None:
        await self.link.submit(
            lambda: jobs.settle_bounce(self.sql, self.clock(), delivery_id, state, detail)
        )

    async def record_status(
        self,
        delivery_id: int,
        queue_id: str,
        platform_id: str,
        status: str,
        classify: Callable[[bool], StatusClass],
        max_statuses: int,
    ) -> tuple[CallbackResult, StatusClass]:
        return await self.link.submit(
            lambda: jobs.record_status(
                self.sql,
                self.clock,
                delivery_id,
                queue_id,
                platform_id,
                status,
                classify,
                max_statuses,
            )
        )

    # --- health, metrics, the operator's queue commands --------------------------------------

    async def stats(self) -> SpoolStats:
        return await self.link.read(lambda: queue_view.stats(self.sql, self.clock()))

    async def unconfirmed(self) -> int:
        return await self.link.read(lambda: queue_view.unconfirmed(self.sql))

    async def probe_writable(self) -> None:
        await self.link.submit(lambda: queue_view.probe_writable(self.sql, self.clock()))

    async def show_message(self, queue_id: str) -> MessageDetail | None:
        return await self.link.read(lambda: queue_view.show_message(self.sql, queue_id))

    async def retry_message(self, queue_id: str) -> int | None:
        return await self.link.submit(
            lambda: queue_view.retry_message(self.sql, self.clock(), queue_id), wakes=True
        )

    async def drop_message(self, queue_id: str) -> bool:
        return await self.link.submit(lambda: queue_view.drop_message(self.sql, queue_id))

    async def find_deliveries(self, query: Search) -> list[DeliveryLine]:
        return await self.link.read(lambda: queue_view.find_deliveries(self.sql, query))

    async def overview(self, *, errors: int = 5) -> Overview:
        return await self.link.read(lambda: queue_view.overview(self.sql, self.clock(), errors))

    # --- limits (budget.py) ------------------------------------------------------------------

    async def release_held(
        self, today: Mapping[str, DayLimits], give_up_after: float, limit: int = 500
    ) -> tuple[int, float | None]:
        return await self.link.submit(
            lambda: held.release(self.sql, self.clock(), today, limit, give_up_after), wakes=True
        )

    async def recheck_held(self) -> int:
        return await self.link.submit(lambda: held.recheck(self.sql, self.clock()))

    async def next_held(self) -> float | None:
        return await self.link.read(lambda: held.next_held(self.sql))

    async def count_refusal(self, spend: Spend) -> budget.Trip | None:
        return await self.link.submit(lambda: budget.count_refusal(self.sql, spend, self.clock()))

    async def over_limit(self, spend: Spend) -> str | None:
        return await self.link.read(lambda: budget.over_limit(self.sql, spend, self.clock()))

    async def budget_used(self, today: Mapping[str, DayLimits]) -> dict[str, tuple[int, int]]:
        return await self.link.read(lambda: budget.used(self.sql, today))

    async def notices_owed(self) -> list[budget.Trip]:
        return await self.link.read(lambda: budget.trips(self.sql))

    async def store_notice(self, trip: budget.Trip, message: IncomingMessage) -> str | None:
        now = self.clock()
        new = NewMessage(new_queue_id(now), now, message)

        def make() -> Job[str | None]:
            if not (yield from budget.claim_notice(self.sql, trip)):
                return None
            stored = (yield from jobs.insert(self.sql, [new]))[0]
            return stored if isinstance(stored, str) else None  # (a notice spends nothing)

        return await self.link.submit(make, wakes=True)

    # --- the console (the status page: spool/console.py) --------------------------------------

    async def console_find(self, search: ConsoleSearch) -> list[FoundLine]:
        return await self.link.read(lambda: console.find(self.sql, search))

    async def console_subject(self, queue_id: str) -> str | None:
        return await self.link.read(lambda: console.subject(self.sql, queue_id))

    async def console_day(self, since: float) -> Day:
        return await self.link.read(lambda: console.day(self.sql, since))

    async def console_requests(self, ids: Sequence[int]) -> dict[int, tuple[str, dict[str, str]]]:
        return await self.link.read(lambda: console.requests_of(self.sql, ids))

    async def console_hourly(self) -> Hourly:
        return await self.link.read(lambda: console.hourly(self.sql, self.clock()))

    async def console_act(self, action: Action, queue_id: str, who: str) -> int | None:
        return await self.link.submit(
            lambda: console.act(self.sql, self.clock(), action, queue_id, who), wakes=True
        )

    async def console_failed(self, since: float, until: float, limit: int) -> list[DeliveryLine]:
        return await self.link.read(lambda: console.failed_between(self.sql, since, until, limit))

    async def console_send_anyway(
        self, queue_id: str, who: str, today: Mapping[str, DayLimits]
    ) -> int | None:
        return await self.link.submit(
            lambda: console.send_anyway(self.sql, self.clock(), queue_id, who, today), wakes=True
        )

    async def console_retry_failed(self, since: float, until: float, who: str) -> int:
        return await self.link.submit(
            lambda: console.retry_failed(self.sql, self.clock(), since, until, who), wakes=True
        )

    # --- values kept for the gateways --------------------------------------------------------

    async def picture(self, queue_id: str) -> tuple[str, bytes] | None:
        return await self.link.read(lambda: media.read(self.sql, queue_id))

    async def callback_secret(self) -> str:
        candidate = secrets.token_urlsafe(32)  # 256 bits, used only if there is none yet
        return await self.link.submit(
            lambda: jobs.get_or_set(self.sql, meta.CALLBACK_SECRET, candidate)
        )


if TYPE_CHECKING:
    # mypy checks here that the shared spool is all a SpoolInterface promises.
    _IMPLEMENTS: type[SpoolInterface] = BaseSpool
