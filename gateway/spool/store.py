"""The SQLite spool: one file, one writer thread, commits grouped; reads on their own connections.

Spool is the SQLite implementation of interface.SpoolInterface. Its methods are thin: the
statements are in sql.py, the jobs the writer thread runs in deliveries.py, followup.py and
queue_view.py, the thread and its group commits in writer.py, the schema in schema.py.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from gateway.errors import ShuttingDown, TooManyTexts
from gateway.spool import deliveries, followup, meta, queue_view, search
from gateway.spool.interface import SpoolInterface
from gateway.spool.packing import SHARED_MIN, load_texts, pack_requests, unpack_request
from gateway.spool.rows import (
    Delivery,
    DeliveryLine,
    IncomingMessage,
    MessageDetail,
    MessageSummary,
    NewDelivery,
    Overview,
    PendingBounce,
    Result,
    Search,
    SpoolStats,
)
from gateway.spool.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, _statements
from gateway.spool.states import BounceState, CallbackResult, StatusClass
from gateway.spool.writer import Readers, Writer

# Where they were before the spool was a package; tests and tools import them from here.
__all__ = ["MIGRATIONS", "SCHEMA", "SCHEMA_VERSION", "Delivery", "IncomingMessage",
           "NewDelivery", "Result", "SharedTexts", "Spool", "_statements", "load_texts",
           "new_queue_id", "pack_requests", "unpack_request"]

T = TypeVar("T")

# What the distinct texts of one message may add up to, in units of smtp.max_message_size: room
# for the text and HTML of a message sent to several domains, not for a copy per recipient.
TEXTS_PER_MESSAGE_SIZE = 10



class SharedTexts:
    """The long request values of one message, each kept once however many requests carry it.

    Rendering a request per recipient makes a new copy of the text every time; sharing them as
    they are made keeps one copy in memory, and the spool stores what is shared once. Texts
    that differ per recipient (a template with {to} or {recipient}) cannot be shared, so what
    one message may cost is bounded: past TEXTS_PER_MESSAGE_SIZE times the size limit in
    distinct texts it is refused as too large, before the next copy is made.
    """

    __slots__ = ("_seen", "limit", "size")

    def __init__(self, max_message_size: int) -> None:
        self._seen: dict[str, str] = {}
        self.size = 0
        self.limit = TEXTS_PER_MESSAGE_SIZE * max_message_size

    def share(self, request: Mapping[str, str]) -> dict[str, str]:
        shared = dict(request)
        for key, value in request.items():
            if len(value) < SHARED_MIN:
                continue
            known = self._seen.get(value)
            if known is None:
                self.size += len(value)
                if self.size > self.limit:
                    raise TooManyTexts
                self._seen[value] = known = value
            shared[key] = known
        return shared


# A counter from a random start: unique within a process for 16 million ids a millisecond, and
# unlikely to meet another run's ids in the same millisecond — without a urandom call per message.
_TAIL = itertools.count(secrets.randbelow(1 << 24))


def new_queue_id(now: float) -> str:
    # Time first so ids sort by arrival, like Postfix queue ids; the tail keeps them unique.
    return f"{int(now * 1000):011X}{next(_TAIL) & 0xFFFFFF:06X}"


class Spool:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time,
                 max_batch: int = 512) -> None:
        self.path = Path(path)
        self.clock = clock
        self._writer = Writer(self.path, max_batch)
        self._readers = Readers(self.path)

    @property
    def commits(self) -> int:
        """How many group commits ran, for tests and metrics."""
        return self._writer.commits

    @property
    def healthy(self) -> bool:
        # A local file has no connection to lose; a full disk shows in /healthz's probe write.
        return True

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, *, recover: bool = True) -> int:
        """Open (creating if needed); with `recover`, which only the daemon holding the spool's
        lock may ask for, take back leases a crash left. Returns how many were taken back."""
        await self._writer.start()
        return await self.run(functools.partial(deliveries.recover, clock=self.clock)) \
            if recover else 0

    async def stop(self) -> None:
        if await self._writer.stop():
            await asyncio.to_thread(self._readers.close)

    # --- running jobs ------------------------------------------------------------------------

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on the writer thread inside a committed transaction; returns its result."""
        return await self._writer.submit(fn)

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """`run` as a plain future, queued at once. Cancelling it only stops the waiting: the
        job is done (and committed) all the same."""
        return self._writer.submit(fn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in a read transaction on a connection of its own, in a worker thread: a
        snapshot read while the writer goes on committing."""
        if not self._writer.running:
            raise ShuttingDown("spool is closed")
        return await self._readers.read(fn)

    # --- the accept path ---------------------------------------------------------------------

    def accept(self, message: IncomingMessage) -> asyncio.Future[str]:
        """Store a message and its deliveries durably; the future gives the queue id.

        A plain future, not a coroutine: on a busy loop every extra step to the 250 (a task
        to start, a shield to pass through) waits its turn behind every other session's."""
        now = self.clock()
        queue_id = new_queue_id(now)
        return self._writer.submit_together(deliveries.insert,
                                            deliveries.NewMessage(queue_id, now, message))

    # --- the delivery path -------------------------------------------------------------------

    async def lease(self, limit: int, lease_seconds: float) -> list[Delivery]:
        return await self.run(functools.partial(deliveries.lease, clock=self.clock, limit=limit,
                                                lease_seconds=lease_seconds))

    async def next_due(self) -> float | None:
        return await self.run(deliveries.next_due)

    async def release(self, delivery_ids: Sequence[int]) -> int:
        return await self.run(functools.partial(deliveries.release, clock=self.clock,
                                                delivery_ids=delivery_ids))

    async def record(self, *results: Result) -> None:
        await self.run(functools.partial(deliveries.record, clock=self.clock, results=results))

    async def purge(self, older_than: float) -> int:
        """Forget messages whose every delivery ended before `older_than`."""
        return await self.run(functools.partial(deliveries.purge, older_than=older_than))

    # --- bounces and callbacks ---------------------------------------------------------------

    async def mark_bounce(self, delivery_id: int) -> bool:
        return await self.run(functools.partial(deliveries.mark_bounce,
                                                delivery_id=delivery_id))

    async def pending_bounces(self, limit: int = 50) -> list[PendingBounce]:
        return await self.read(functools.partial(followup.pending_bounces, limit=limit))

    async def settle_bounce(self, delivery_id: int, state: BounceState,
                            detail: str = "") -> None:
        await self.run(functools.partial(followup.settle_bounce, clock=self.clock,
                                         delivery_id=delivery_id, state=state, detail=detail))

    async def record_status(self, delivery_id: int, queue_id: str, platform_id: str,
                            status: str, classify: Callable[[bool], StatusClass],
                            max_statuses: int) -> tuple[CallbackResult, StatusClass]:
        return await self.run(functools.partial(
            followup.record_status, clock=self.clock, delivery_id=delivery_id,
            queue_id=queue_id, platform_id=platform_id, status=status, classify=classify,
            max_statuses=max_statuses))

    # --- health, metrics, the operator's queue commands --------------------------------------

    async def stats(self) -> SpoolStats:
        return await self.read(functools.partial(queue_view.stats, clock=self.clock))

    async def unconfirmed(self) -> int:
        return await self.read(queue_view.unconfirmed)

    async def probe_writable(self) -> None:
        await self.run(functools.partial(queue_view.probe_writable, clock=self.clock))

    async def list_messages(self, *, include_finished: bool = False,
                            limit: int = 1000) -> list[MessageSummary]:
        return await self.read(functools.partial(
            queue_view.list_messages, include_finished=include_finished, limit=limit))

    async def show_message(self, queue_id: str) -> MessageDetail | None:
        return await self.read(functools.partial(queue_view.show_message, queue_id=queue_id))

    async def retry_message(self, queue_id: str) -> int | None:
        return await self.run(functools.partial(queue_view.retry_message, clock=self.clock,
                                                queue_id=queue_id))

    async def drop_message(self, queue_id: str) -> bool:
        return await self.run(functools.partial(queue_view.drop_message, queue_id=queue_id))

    async def find_deliveries(self, query: Search) -> list[DeliveryLine]:
        return await self.read(functools.partial(search.find_deliveries, search=query))

    async def overview(self, *, errors: int = 5) -> Overview:
        return await self.read(functools.partial(search.overview, clock=self.clock,
                                                 errors=errors))

    async def callback_secret(self) -> str:
        candidate = secrets.token_urlsafe(32)   # 256 bits, used only if there is none yet
        return await self.run(functools.partial(meta.get_or_set, key=meta.CALLBACK_SECRET,
                                                value=candidate))


if TYPE_CHECKING:
    # mypy checks here that the SQLite spool is all a SpoolInterface promises.
    _IMPLEMENTS: type[SpoolInterface] = Spool
