"""The gateway's connections to a PostgreSQL spool: one writer with group commit, a few readers,
one listener for wake-ups, each re-opened with backoff when the server goes away.

Group commit as in the SQLite spool: every write (an accepted message, a lease, an attempt's
result) is a job queued for the writer, which runs as many as are waiting in one transaction
and commits once, so the server flushes its WAL once for all of them. A job's future settles
only after COMMIT has returned: that is when a 250 may be given. If the connection breaks
during the transaction, or during the COMMIT itself, the outcome is unknown and every job of
the batch fails with `SpoolError` (the client hears 451 4.3.0 and sends again; a message that
was in fact committed is then stored twice, never lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from gateway.errors import ShuttingDown, SpoolError

log = logging.getLogger("smtp2pulse.spool")
T = TypeVar("T")

Job = Callable[[asyncpg.Connection], Awaitable[Any]]
CHANNEL = "smtp2pulse_due"
CONNECT_TIMEOUT = 5.0
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0
READERS = 4
# asyncpg raises these when the server or the network went away, rather than the statement
# being wrong; any of them means: reconnect, and the outcome of what was running is unknown.
LOST = (OSError, asyncpg.exceptions.ConnectionDoesNotExistError,
        asyncpg.exceptions.InterfaceError, asyncpg.exceptions.CannotConnectNowError,
        asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.CrashShutdownError,
        asyncpg.exceptions.ConnectionFailureError, TimeoutError)


def safe_url(url: str) -> str:
    """The URL with its password replaced, for logs and errors."""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, user_pass = head.partition("//")
    user = user_pass.split(":", 1)[0]
    return f"{scheme}//{user}:***@{tail}"


class Link:
    def __init__(self, url: str, *, max_batch: int = 512,
                 on_notify: Callable[[], None] | None = None) -> None:
        self.url = url
        self.max_batch = max_batch
        self.on_notify = on_notify
        self.healthy = False
        self.commits = 0
        self._jobs: asyncio.Queue[tuple[Job, asyncio.Future[Any]] | None] = asyncio.Queue()
        self._writer: asyncpg.Connection | None = None
        self._readers: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._wake_next = False
        self._retry_at = 0.0

    def __repr__(self) -> str:
        return f"Link({safe_url(self.url)!r}, healthy={self.healthy})"

    async def start(self, prepare: Job) -> None:
        """Connect and run `prepare` (schema, migrations) once; fails if the server is not
        there at start, as a missing SQLite folder does: a typo in spool.url must not pass."""
        try:
            self._writer = await self._connect()
            await prepare(self._writer)
        except LOST as exc:
            raise SpoolError(f"cannot reach spool {safe_url(self.url)}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise SpoolError(f"spool {safe_url(self.url)}: {exc}") from exc
        self.healthy = True
        self._tasks = [asyncio.create_task(self._write_loop(), name="pg-writer"),
                       asyncio.create_task(self._listen_loop(), name="pg-listener")]

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

    def submit(self, job: Job, *, wakes: bool = False) -> asyncio.Future[Any]:
        """Queue `job` for the next group commit. `wakes`: it makes something due, so the
        commit tells every gateway's worker (one NOTIFY per commit, however many jobs)."""
        if self._closed:
            raise ShuttingDown("spool is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self.healthy and loop.time() < self._retry_at:
            # The database is away and the next try to reach it is not due: say so at once
            # (451 to the client) rather than keep the session waiting for the backoff.
            future.set_exception(SpoolError("spool database unreachable"))
            return future
        if wakes:
            self._wake_next = True
        self._jobs.put_nowait((job, future))
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
            batch = [(job, future) for job, future in batch if not future.cancelled()]
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

    async def _commit(self, conn: asyncpg.Connection,
                      batch: list[tuple[Job, asyncio.Future[Any]]]) -> None:
        wake, self._wake_next = self._wake_next, False
        try:
            async with conn.transaction():
                results = [await job(conn) for job, _ in batch]
                if wake:
                    await conn.execute(f"NOTIFY {CHANNEL}")
        except LOST as exc:
            self._set_healthy(False, exc)
            with contextlib.suppress(Exception):
                conn.terminate()
            self._writer = None
            _fail(batch, SpoolError(f"spool database connection lost: {exc}"))
            return
        except Exception as exc:
            if len(batch) > 1:
                await self._commit_one_by_one(conn, batch)
            else:
                _fail(batch, _as_spool_error(exc))
            return
        self.commits += 1
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _commit_one_by_one(self, conn: asyncpg.Connection,
                                 batch: list[tuple[Job, asyncio.Future[Any]]]) -> None:
        # One bad job must not take its neighbours down: each in its own savepoint.
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            async with conn.transaction():
                for job, future in batch:
                    try:
                        async with conn.transaction():
                            outcomes.append((future, await job(conn), None))
                    except LOST:
                        raise
                    except Exception as exc:
                        outcomes.append((future, None, _as_spool_error(exc)))
                await conn.execute(f"NOTIFY {CHANNEL}")
        except Exception as exc:
            if isinstance(exc, LOST):
                self._set_healthy(False, exc)
                self._writer = None
            _fail(batch, _as_spool_error(exc))
            return
        self.commits += 1
        for future, result, error in outcomes:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    def _fail_pending(self, error: BaseException) -> None:
        while not self._jobs.empty():
            item = self._jobs.get_nowait()
            if item is not None and not item[1].done():
                item[1].set_exception(error)

    # --- reads ---------------------------------------------------------------------------------

    async def read(self, query: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run a read-only query on a reader connection, beside the writer."""
        if self._closed:
            raise ShuttingDown("spool is closed")
        try:
            if self._readers is None:
                self._readers = await asyncpg.create_pool(
                    self.url, min_size=0, max_size=READERS, timeout=CONNECT_TIMEOUT,
                    command_timeout=60)
            async with self._readers.acquire() as conn:
                return await query(conn)
        except LOST as exc:
            raise SpoolError(f"spool database unreachable: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise _as_spool_error(exc) from exc

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
                    self.on_notify()   # what was missed while not listening
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
        conn: asyncpg.Connection = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT,
                                                         command_timeout=60)
        return conn

    def _set_healthy(self, healthy: bool, error: BaseException | None = None) -> None:
        if healthy and not self.healthy:
            log.warning("spool database %s reachable again", safe_url(self.url))
        elif not healthy and self.healthy:
            log.error("spool database %s lost: %s; no message is accepted until it is back",
                      safe_url(self.url), error)
        self.healthy = healthy


def _resolve(future: asyncio.Future[None], *_: object) -> None:
    if not future.done():
        future.set_result(None)


def _fail(batch: list[tuple[Job, asyncio.Future[Any]]], error: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)


def _as_spool_error(exc: BaseException) -> SpoolError:
    if isinstance(exc, SpoolError):
        return exc
    return SpoolError(f"{type(exc).__name__}: {exc}")
