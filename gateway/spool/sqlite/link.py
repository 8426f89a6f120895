"""The SQLite spool's connections: one writer thread that groups commits, and read connections
beside it.

Why one thread: SQLite allows one writer at a time anyway, and a single connection owned by a
single thread needs no locking of our own. The thread runs each batch of waiting jobs as one
group commit (commit.py), its statements one after the other on its connection, and hands the
results back to each caller's event loop once the COMMIT returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ShuttingDown, SpoolError
from gateway.spool.commit import (
    Outcome,
    Pending,
    Together,
    alone,
    as_spool_error,
    group_commit,
    settle,
)
from gateway.spool.sqlite import schema, sql
from gateway.spool.steps import Fetch, Job, Query, drive

T = TypeVar("T")
_STOP = object()


def execute(conn: sqlite3.Connection, query: Query) -> Any:
    if query.fetch is Fetch.MANY:
        return conn.executemany(query.statement, query.params).rowcount
    cursor = conn.cursor()
    if query.fetch in (Fetch.ROWS, Fetch.ONE):
        cursor.row_factory = sqlite3.Row
    cursor.execute(query.statement, query.params)
    if query.fetch is Fetch.ROWS:
        return cursor.fetchall()
    if query.fetch is Fetch.ONE:
        return cursor.fetchone()
    if query.fetch is Fetch.VALUE:
        row = cursor.fetchone()
        return None if row is None else row[0]
    return cursor.rowcount


def _settle_all(outcomes: list[Outcome], on_wake: Callable[[], None] | None = None) -> None:
    """Hand results to their loops: one wake-up per loop for a whole batch, not one per job."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, mine in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting any more
            loop.call_soon_threadsafe(_settle, mine, on_wake)


def _settle(outcomes: list[Outcome], on_wake: Callable[[], None] | None) -> None:
    # Checked on the loop, where a caller's cancellation happens: a client that hung up after
    # the final dot must not leave its message to the worker's next idle look.
    if settle(outcomes) and on_wake is not None:
        on_wake()


class SqliteLink:
    """The thread owning the spool's one writing connection, and the readers."""

    def __init__(
        self, path: Path, max_batch: int = 512, on_wake: Callable[[], None] | None = None
    ) -> None:
        self.path = path
        self.max_batch = max_batch
        self.on_wake = on_wake
        self.commits = 0
        # A local file has no connection to lose; a full disk shows in /healthz's probe write.
        self.healthy = True
        self._jobs: queue.SimpleQueue[Pending | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._readers = Readers(path)
        self.closed = False

    @property
    def running(self) -> bool:
        return self._thread is not None and not self.closed

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready, loop), name="spool-writer", daemon=True
        )
        self._thread.start()
        await ready

    async def stop(self) -> None:
        if self._thread is None or self.closed:
            return
        self.closed = True
        self._jobs.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self._readers.close)

    def submit(self, make: Callable[[], Job[T]], *, wakes: bool = False) -> asyncio.Future[T]:
        return self._queue(Pending(make, *self._future(), wakes=wakes))

    def submit_together(
        self, run_all: Together, item: Any, *, wakes: bool = False
    ) -> asyncio.Future[Any]:
        return self._queue(
            Pending(alone(run_all, item), *self._future(), run_all, item, wakes=wakes)
        )

    def _future(self) -> tuple[asyncio.Future[Any], asyncio.AbstractEventLoop]:
        if not self.running:
            raise ShuttingDown("spool is closed")
        loop = asyncio.get_running_loop()
        return loop.create_future(), loop

    def _queue(self, job: Pending) -> asyncio.Future[Any]:
        self._jobs.put(job)
        return job.future

    async def read(self, make: Callable[[], Job[T]]) -> T:
        if not self.running:
            raise ShuttingDown("spool is closed")
        return await asyncio.to_thread(self._readers.read, make)

    def _run(self, ready: asyncio.Future[None], loop: asyncio.AbstractEventLoop) -> None:
        try:
            conn = schema.open_writer(self.path)
        except (sqlite3.Error, OSError, SpoolError) as exc:
            error = (
                exc
                if isinstance(exc, SpoolError)
                else SpoolError(f"cannot open spool {self.path}: {exc}")
            )
            loop.call_soon_threadsafe(_resolve, ready, error)
            return
        loop.call_soon_threadsafe(_resolve, ready, None)
        try:
            while True:
                first = self._jobs.get()
                if first is _STOP:
                    break
                batch = [first]
                while len(batch) < self.max_batch:
                    try:
                        batch.append(self._jobs.get_nowait())
                    except queue.Empty:
                        break
                self._commit([job for job in batch if isinstance(job, Pending)], conn)
                if _STOP in batch:
                    break
        finally:
            conn.close()
            self._fail_pending()

    def _commit(self, batch: list[Pending], conn: sqlite3.Connection) -> None:
        if not batch:
            return
        outcomes, committed = drive(
            group_commit(batch, Query(sql.BEGIN_WRITE)), lambda query: execute(conn, query)
        )
        self.commits += committed
        _settle_all(outcomes, self.on_wake)

    def _fail_pending(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if isinstance(job, Pending):
                _settle_all([(job, None, ShuttingDown("spool is closed"))])


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class Readers:
    """Read connections of their own, used from worker threads.

    For queries that change nothing (queue list, metrics, a message's history): in WAL mode they
    read a snapshot while the writer goes on committing, where on the writer thread a long one
    would hold up every accept behind it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.closed = False
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()

    def read(self, make: Callable[[], Job[T]]) -> T:
        try:
            conn: sqlite3.Connection | None = self._idle.get_nowait()
        except queue.Empty:
            conn = None
        try:
            if conn is None:
                conn = schema.open_reader(self.path)
            reader = conn
            reader.execute(sql.BEGIN_READ)
            try:
                return drive(make(), lambda query: execute(reader, query))
            finally:
                reader.execute(sql.ROLLBACK)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
                conn = None
            raise as_spool_error(exc) from exc
        finally:
            if conn is not None:
                self._idle.put(conn)
                if self.closed:
                    self.close()

    def close(self) -> None:
        self.closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
