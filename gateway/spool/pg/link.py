"""The gateway's connections to a PostgreSQL spool: one writer with group commit, a few readers,
one listener for wake-ups, each re-opened with backoff when the server goes away.

The writer task runs each batch of waiting jobs as one group commit (commit.py), so the server
flushes its WAL once for all of them. If the connection breaks during the transaction, or
during the COMMIT itself, the outcome is unknown: the messages of the batch are looked up on a
new connection (lost_commit.py), and those the COMMIT did store are answered as stored, so a
4xx never goes to a message that was taken. Every other job fails with
`SpoolError` (451 4.3.0). Only a database that stays away longer than that leaves the outcome
unknown; then a message that was in fact committed may be stored twice, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Callable
from typing import Any, TypeVar

import asyncpg

from gateway.errors import ShuttingDown, SpoolError
from gateway.spool.commit import Pending, Together, alone, as_spool_error, group_commit, settle
from gateway.spool.pg import sql
from gateway.spool.pg.lost_commit import stored_after_loss
from gateway.spool.pg.schema import prepare
from gateway.spool.pg.wire import LOST, execute, is_lost, safe_url
from gateway.spool.rows import Accepted
from gateway.spool.steps import Job, Query, drive_async

log = logging.getLogger("smtp2pulse.spool")
T = TypeVar("T")

CHANNEL = "smtp2pulse_due"  # sql.NOTIFY's
CONNECT_TIMEOUT = 5.0
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0
READERS = 4


class PgLink:
    def __init__(
        self, url: str, *, max_batch: int = 512, on_notify: Callable[[], None] | None = None
    ) -> None:
        self.url = url
        self.max_batch = max_batch
        self.on_notify = on_notify
        self.healthy = False
        self.commits = 0
        self._jobs: asyncio.Queue[Pending | None] = asyncio.Queue()
        self._writer: asyncpg.Connection | None = None
        self._readers: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._retry_at = 0.0

    def __repr__(self) -> str:
        return f"PgLink({safe_url(self.url)!r}, healthy={self.healthy})"

    async def start(self) -> None:
        """Connect and create or upgrade the tables once; fails if the server is not there at
        start, as a missing SQLite folder does: a typo in spool.url must not pass."""
        try:
            self._writer = await self._connect()
            await prepare(self._writer)
        except (*LOST, asyncpg.PostgresError, SpoolError) as exc:
            if self._writer is not None:  # a schema it refuses: nothing more to say to it
                self._writer.terminate()
                self._writer = None
            if isinstance(exc, SpoolError):
                raise
            if isinstance(exc, LOST):
                raise SpoolError(f"cannot reach spool {safe_url(self.url)}: {exc}") from exc
            raise SpoolError(f"spool {safe_url(self.url)}: {exc}") from exc
        self.healthy = True
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="pg-writer"),
            asyncio.create_task(self._listen_loop(), name="pg-listener"),
        ]

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._jobs.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._tasks[0], 10.0) if self._tasks else None
        for task in self._tasks[1:]:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._fail_pending(ShuttingDown("spool is closed"))
        for conn in (self._writer, self._listener):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2.0)
        if self._readers is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._readers.close(), 2.0)

    # --- writes: group commit ------------------------------------------------------------------

    def submit(self, make: Callable[[], Job[T]], *, wakes: bool = False) -> asyncio.Future[T]:
        return self._queue(make, wakes)

    def submit_together(
        self, run_all: Together, item: Any, *, wakes: bool = False
    ) -> asyncio.Future[Any]:
        return self._queue(alone(run_all, item), wakes, run_all, item)

    def _queue(
        self,
        make: Callable[[], Job[Any]],
        wakes: bool,
        run_all: Together | None = None,
        item: Any = None,
    ) -> asyncio.Future[Any]:
        if self._closed:
            raise ShuttingDown("spool is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self.healthy and loop.time() < self._retry_at:
            # The database is away and the next try to reach it is not due: say so at once
            # (451 to the client) rather than keep the session waiting for the backoff.
            future.set_exception(SpoolError("spool database unreachable"))
            return future
        self._jobs.put_nowait(Pending(make, future, loop, run_all, item, wakes))
        return future

    async def _write_loop(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            first = await self._jobs.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch and not self._jobs.empty():
                item = self._jobs.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            if self._writer is None or self._writer.is_closed():
                try:
                    self._writer = await self._connect()
                    delay = BACKOFF_FIRST
                    self._set_healthy(True)
                except LOST as exc:
                    self._set_healthy(False, exc)
                    _fail(batch, SpoolError(f"spool database unreachable: {exc}"))
                    self._retry_at = asyncio.get_running_loop().time() + delay
                    delay = min(delay * 2, BACKOFF_MAX) * random.uniform(0.8, 1.2)
                    if stop:
                        return
                    continue
            await self._commit(self._writer, batch)
            if stop:
                return

    async def _commit(self, conn: asyncpg.Connection, batch: list[Pending]) -> None:
        # One NOTIFY a commit, however many of its jobs made something due.
        finish = [Query(sql.NOTIFY)] if any(job.wakes for job in batch) else []
        try:
            outcomes, committed = await drive_async(
                group_commit(batch, Query(sql.BEGIN_WRITE), finish, is_lost),
                functools.partial(execute, conn),
            )
        except LOST as exc:
            self._set_healthy(False, exc)
            backend = conn.get_server_pid()
            with contextlib.suppress(Exception):
                conn.terminate()
            self._writer = None
            for job, queue_id in await stored_after_loss(
                self._connect, lambda: self._closed, batch, backend
            ):
                job.future.set_result(Accepted(queue_id))
            _fail(batch, SpoolError(f"spool database connection lost: {exc}"))
            return
        self.commits += committed
        settle(outcomes)  # one whose caller gave up waiting: the NOTIFY reaches our listener too

    def _fail_pending(self, error: BaseException) -> None:
        while not self._jobs.empty():
            item = self._jobs.get_nowait()
            if item is not None and not item.future.done():
                item.future.set_exception(error)

    # --- reads ---------------------------------------------------------------------------------

    async def read(self, make: Callable[[], Job[T]]) -> T:
        """Run a job that changes nothing on a reader connection, beside the writer."""
        if self._closed:
            raise ShuttingDown("spool is closed")
        try:
            if self._readers is None:
                self._readers = await asyncpg.create_pool(
                    self.url,
                    min_size=0,
                    max_size=READERS,
                    timeout=CONNECT_TIMEOUT,
                    command_timeout=60,
                )
            async with self._readers.acquire() as conn:
                return await drive_async(make(), functools.partial(execute, conn))
        except LOST as exc:
            raise SpoolError(f"spool database unreachable: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise as_spool_error(exc) from exc

    # --- wake-ups ------------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        """LISTEN for other gateways' commits, so a message one of them stores (or a retry
        an operator asks for) is sent at once by whoever is free, not at the next poll."""
        delay = BACKOFF_FIRST
        while not self._closed:
            try:
                conn = self._listener = await self._connect()
                lost = asyncio.get_running_loop().create_future()
                conn.add_termination_listener(functools.partial(_resolve, lost))
                await conn.add_listener(CHANNEL, self._notified)
                delay = BACKOFF_FIRST
                if self.on_notify is not None:
                    self.on_notify()  # what was missed while not listening
                await lost
            except LOST as exc:
                log.debug("spool listener: %s", exc)
            self._listener = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _notified(self, *_: object) -> None:
        if self.on_notify is not None:
            self.on_notify()

    # --- connections ---------------------------------------------------------------------------

    async def _connect(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self.url, timeout=CONNECT_TIMEOUT, command_timeout=60
        )
        return conn

    def _set_healthy(self, healthy: bool, error: BaseException | None = None) -> None:
        if healthy and not self.healthy:
            log.warning("spool database %s reachable again", safe_url(self.url))
        elif not healthy and self.healthy:
            log.error(
                "spool database %s lost: %s; no message is accepted until it is back",
                safe_url(self.url),
                error,
            )
        self.healthy = healthy


def _resolve(future: asyncio.Future[None], *_: object) -> None:
    if not future.done():
        future.set_result(None)


def _fail(batch: list[Pending], error: BaseException) -> None:
    for job in batch:
        if not job.future.done():
            job.future.set_exception(error)
