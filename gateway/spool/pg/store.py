"""The spool in PostgreSQL (`spool.url`), shared by every gateway pointed at it.

What differs from the SQLite spool, and why:

- Leases are claimed with `FOR UPDATE SKIP LOCKED` (see pg/sql.py). A gateway that dies
  leaves its leases to expire, and whoever leases next takes them over; nobody takes a lease
  that has not expired, and a lease outlives its request's whole deadline (`api.timeout`), so
  a live one is never stolen.
- `start` takes back no lease: in SQLite one process owns the spool, so a `sending` row at
  start was left by a crash; here it may be another gateway's live send.
- A commit that makes something due sends one NOTIFY; every gateway LISTENs (pg/link.py), so
  its worker wakes at once instead of at its next look at the clock.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from gateway.errors import ShuttingDown
from gateway.spool import meta
from gateway.spool.followup import CONFIRMED
from gateway.spool.packing import load_texts, pack_requests, unpack_request
from gateway.spool.pg import queue_view as pg_view
from gateway.spool.pg import sql
from gateway.spool.pg.link import Link
from gateway.spool.pg.schema import prepare
from gateway.spool.rows import (
    Delivery,
    DeliveryLine,
    IncomingMessage,
    MessageDetail,
    MessageSummary,
    Overview,
    PendingBounce,
    Result,
    Search,
    SpoolStats,
)
from gateway.spool.states import TAKEN_BY_CALLBACK, BounceState, CallbackResult, State, StatusClass
from gateway.spool.store import new_queue_id

if TYPE_CHECKING:
    from gateway.spool.interface import SpoolInterface

STATUS_EVENT = "status"


@dataclass(frozen=True, slots=True)
class _Incoming:
    queue_id: str
    now: float
    message: IncomingMessage
    texts: str | None
    requests: list[str]
    future: asyncio.Future[str]


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as the column arrays unnest() takes."""
    return [[row[i] for row in rows] for i in range(width)] if rows else [[]] * width


class PgSpool:
    def __init__(self, url: str, *, clock: Callable[[], float] = time.time,
                 on_notify: Callable[[], None] | None = None) -> None:
        self.clock = clock
        self.link = Link(url, on_notify=on_notify)
        self._incoming: list[_Incoming] = []

    def __repr__(self) -> str:
        return f"PgSpool({self.link!r})"

    @property
    def commits(self) -> int:
        return self.link.commits

    @property
    def healthy(self) -> bool:
        return self.link.healthy

    async def start(self, *, recover: bool = True) -> int:
        await self.link.start(prepare)
        return 0

    async def stop(self) -> None:
        await self.link.stop()

    # --- the accept path ---------------------------------------------------------------------

    def accept(self, message: IncomingMessage) -> Awaitable[str]:
        """Store a message durably; the future gives its queue id once it is committed.

        Every message that arrives before the writer runs the job goes into its one statement
        (see sql.ACCEPT), in the same group commit."""
        now = self.clock()
        texts, requests = pack_requests([d.request for d in message.deliveries])
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        batch = self._incoming
        batch.append(_Incoming(new_queue_id(now), now, message, texts, requests, future))
        if len(batch) == 1:
            try:
                job = self.link.submit(functools.partial(self._store, batch), wakes=True)
            except BaseException:
                self._incoming = []
                raise
            job.add_done_callback(functools.partial(self._settle, batch))
        return future

    async def _store(self, batch: list[_Incoming], conn: asyncpg.Connection) -> None:
        if self._incoming is batch:
            self._incoming = []    # closed: the next accept starts the next statement
        messages = [(item.queue_id, item.now, item.message.mail_from, item.message.peer,
                     item.message.helo, item.message.auth_user, len(item.message.raw),
                     item.message.raw, item.texts) for item in batch]
        deliveries = [(item.queue_id, d.recipient, request, *d.initial_state(), item.now)
                      for item in batch
                      for d, request in zip(item.message.deliveries, item.requests, strict=True)]
        await conn.execute(sql.ACCEPT, *_columns(messages, 9), *_columns(deliveries, 6))
        events = list(dict.fromkeys((item.now, *d.event, item.queue_id, d.recipient)
                                    for item in batch for d in item.message.deliveries
                                    if d.event is not None))
        if events:
            await conn.executemany(sql.INSERT_EVENT_BY_RECIPIENT, events)

    def _settle(self, batch: list[_Incoming], job: asyncio.Future[None]) -> None:
        """After the commit, or its failure: each message of the statement gets its answer."""
        if self._incoming is batch:
            self._incoming = []    # the job never ran (the database is away)
        error = (ShuttingDown("spool is closed") if job.cancelled() else job.exception())
        for item in batch:
            if item.future.done():
                continue
            if error is not None:
                item.future.set_exception(error)
            else:
                item.future.set_result(item.queue_id)

    # --- the delivery path -------------------------------------------------------------------

    async def lease(self, limit: int, lease_seconds: float) -> list[Delivery]:
        async def take(conn: asyncpg.Connection) -> list[Delivery]:
            now = self.clock()
            rows = await conn.fetch(sql.LEASE, now + lease_seconds, now, limit)
            return [Delivery(id=row["id"], message_id=row["message_id"],
                             recipient=row["recipient"],
                             request=unpack_request(row["request"], load_texts(row["texts"])),
                             attempts=row["attempts"], received_at=row["received_at"],
                             auth_user=row["auth_user"])
                    for row in rows]
        leased: list[Delivery] = await self.link.submit(take)
        return leased

    async def next_due(self) -> float | None:
        async def earliest(conn: asyncpg.Connection) -> float | None:
            value = await conn.fetchval(sql.NEXT_DUE)
            return None if value is None else float(value)
        return await self.link.read(earliest)

    async def release(self, delivery_ids: Sequence[int]) -> int:
        async def write(conn: asyncpg.Connection) -> int:
            status = await conn.execute(sql.RELEASE, self.clock(), list(delivery_ids))
            return sql.rows_changed(status)
        released: int = await self.link.submit(write, wakes=True)
        return released

    async def record(self, *results: Result) -> None:
        async def write(conn: asyncpg.Connection) -> None:
            now = self.clock()
            rows = [(r.delivery_id, r.state.value, r.next_attempt_at, r.platform_id,
                     None if r.state == State.SENT else r.detail) for r in results]
            # Those dropped by an operator while they were being sent are not there.
            there = {row["id"] for row in await conn.fetch(sql.RECORD_RESULTS,
                                                           *_columns(rows, 5), now)}
            bounces = [r.delivery_id for r in results if r.bounce and r.delivery_id in there]
            if bounces:
                await conn.execute(sql.MARK_BOUNCES, bounces)
            events = [(r.delivery_id, r.event, r.detail) for r in results
                      if r.delivery_id in there]
            if events:
                ids, kinds, details = _columns(events, 3)
                await conn.execute(sql.INSERT_EVENTS, ids, now, kinds, details)
        # A retry made due (a deferral) is for whoever is free, possibly another gateway.
        await self.link.submit(write, wakes=any(r.state == State.QUEUED for r in results))

    async def purge(self, older_than: float) -> int:
        async def delete(conn: asyncpg.Connection) -> int:
            return sql.rows_changed(await conn.execute(sql.PURGE, older_than, older_than))
        purged: int = await self.link.submit(delete)
        return purged

    # --- bounces and callbacks ---------------------------------------------------------------

    async def mark_bounce(self, delivery_id: int) -> bool:
        async def mark(conn: asyncpg.Connection) -> bool:
            return sql.rows_changed(await conn.execute(sql.MARK_BOUNCE, delivery_id)) > 0
        marked: bool = await self.link.submit(mark)
        return marked

    async def pending_bounces(self, limit: int = 50) -> list[PendingBounce]:
        async def query(conn: asyncpg.Connection) -> list[PendingBounce]:
            return [PendingBounce(delivery_id=row["delivery_id"], queue_id=row["queue_id"],
                                  mail_from=row["mail_from"], recipient=row["recipient"],
                                  received_at=row["received_at"], state=State(row["state"]),
                                  reason=row["reason"], raw=row["raw"])
                    for row in await conn.fetch(sql.PENDING_BOUNCES, limit)]
        return await self.link.read(query)

    async def settle_bounce(self, delivery_id: int, state: BounceState,
                            detail: str = "") -> None:
        async def write(conn: asyncpg.Connection) -> None:
            await conn.execute(sql.SETTLE_BOUNCE, state, delivery_id)
            await conn.execute(sql.INSERT_EVENT, delivery_id, self.clock(), f"bounce {state}",
                               detail)
        await self.link.submit(write)

    async def record_status(self, delivery_id: int, queue_id: str, platform_id: str,
                            status: str, classify: Callable[[bool], StatusClass],
                            max_statuses: int) -> tuple[CallbackResult, StatusClass]:
        async def write(conn: asyncpg.Connection) -> tuple[CallbackResult, StatusClass]:
            await conn.execute(sql.LOCK_DELIVERY, delivery_id)
            row = await conn.fetchrow(sql.DELIVERY_FOR_STATUS, delivery_id, queue_id)
            if row is None:
                return "unknown", StatusClass.UNKNOWN
            meaning = classify(bool(row["kannel"]))
            detail = (f"{status} ({meaning})"
                      + (f" platform_id={platform_id}" if platform_id else ""))
            if await conn.fetchval(sql.STATUS_SEEN, delivery_id, STATUS_EVENT, detail):
                return "repeated", meaning
            if await conn.fetchval(sql.STATUS_COUNT, delivery_id, STATUS_EVENT) >= max_statuses:
                return "ignored", meaning    # one signed URL must not fill the spool
            now = self.clock()
            await conn.execute(sql.RECORD_STATUS, status, meaning, now, platform_id, delivery_id)
            if row["state"] in TAKEN_BY_CALLBACK:
                await conn.execute(sql.INSERT_EVENT, delivery_id, now, "sent", CONFIRMED)
            await conn.execute(sql.INSERT_EVENT, delivery_id, now, STATUS_EVENT, detail)
            return "recorded", meaning
        outcome: tuple[CallbackResult, StatusClass] = await self.link.submit(write)
        return outcome

    # --- health, metrics, the operator's queue commands --------------------------------------

    async def stats(self) -> SpoolStats:
        return await self.link.read(functools.partial(pg_view.stats, clock=self.clock))

    async def unconfirmed(self) -> int:
        return await self.link.read(pg_view.unconfirmed)

    async def probe_writable(self) -> None:
        await self.link.submit(functools.partial(pg_view.probe_writable, clock=self.clock))

    async def list_messages(self, *, include_finished: bool = False,
                            limit: int = 1000) -> list[MessageSummary]:
        return await self.link.read(functools.partial(
            pg_view.list_messages, include_finished=include_finished, limit=limit))

    async def show_message(self, queue_id: str) -> MessageDetail | None:
        return await self.link.read(functools.partial(pg_view.show_message, queue_id=queue_id))

    async def retry_message(self, queue_id: str) -> int | None:
        retried: int | None = await self.link.submit(
            functools.partial(pg_view.retry_message, clock=self.clock, queue_id=queue_id),
            wakes=True)
        return retried

    async def drop_message(self, queue_id: str) -> bool:
        dropped: bool = await self.link.submit(
            functools.partial(pg_view.drop_message, queue_id=queue_id))
        return dropped

    async def find_deliveries(self, query: Search) -> list[DeliveryLine]:
        return await self.link.read(functools.partial(pg_view.find_deliveries, query=query))

    async def overview(self, *, errors: int = 5) -> Overview:
        return await self.link.read(functools.partial(pg_view.overview, clock=self.clock,
                                                      errors=errors))

    async def callback_secret(self) -> str:
        candidate = secrets.token_urlsafe(32)   # used only if no gateway made one yet

        async def get_or_set(conn: asyncpg.Connection) -> str:
            await conn.execute(sql.META_IF_ABSENT, meta.CALLBACK_SECRET, candidate)
            return str(await conn.fetchval(sql.META_VALUE, meta.CALLBACK_SECRET))
        secret: str = await self.link.submit(get_or_set)
        return secret


if TYPE_CHECKING:
    _IMPLEMENTS: type[SpoolInterface] = PgSpool
