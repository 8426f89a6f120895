"""One writer thread that groups commits, and the read connections beside it.

Why one thread: SQLite allows one writer at a time anyway, and a single connection owned by a
single thread needs no locking of our own. Why grouping: a commit with `synchronous=FULL` costs
an fsync; every job that arrived while the previous commit was running shares the next one. If a
job fails, the batch is run again with each job in its own savepoint, so one failing job does
not take its neighbours down. A caller's future resolves only after the COMMIT that contains its
work returned — that is what makes a 250 a promise.

Why jobs "together": after every statement the writer thread has to take the GIL back from a
busy event loop, and waiting for it is most of what a commit takes. Jobs submitted with
`submit_together` (the accept path's inserts) are handed to their function all at once, which
stores them in a few statements instead of two per job.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ShuttingDown, SpoolError
from gateway.spool import schema, sql

log = logging.getLogger("smtp2pulse.spool")
T = TypeVar("T")
Outcome = tuple["_Job", Any, BaseException | None]


# Runs many jobs' items in one go: run_all(conn, items) gives each item's result, in order.
RunAll = Callable[[sqlite3.Connection, list[Any]], list[Any]]


class _Job:
    __slots__ = ("fn", "future", "item", "loop", "run_all")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any],
                 loop: asyncio.AbstractEventLoop, run_all: RunAll | None = None,
                 item: Any = None) -> None:
        self.fn, self.future, self.loop = fn, future, loop
        self.run_all, self.item = run_all, item

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        _settle_all([(self, result, error)])


def _settle_all(outcomes: list[Outcome]) -> None:
    """Hand results to their loops: one wake-up per loop for a whole batch, not one per job."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, mine in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting any more
            loop.call_soon_threadsafe(_apply, mine)


def _apply(outcomes: list[Outcome]) -> None:
    for job, result, error in outcomes:
        if job.future.done():       # its caller gave up waiting (the write still happened)
            continue
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)


_STOP = object()


class Writer:
    """The thread owning the spool's one writing connection; jobs are run in group commits."""

    def __init__(self, path: Path, max_batch: int) -> None:
        self.path = path
        self.max_batch = max_batch
        self.commits = 0   # how many group commits ran, for tests and metrics
        self._jobs: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.closed = False

    @property
    def running(self) -> bool:
        return self._thread is not None and not self.closed

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[sqlite3.Connection] = loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready, loop),
                                        name="spool-writer", daemon=True)
        self._thread.start()
        await ready

    async def stop(self) -> bool:
        """False if it was not running."""
        if self._thread is None or self.closed:
            return False
        self.closed = True
        self._jobs.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        return True

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue `fn` at once; the future resolves after the commit that contains it. Cancelling
        it only stops the waiting: the job is done (and committed) all the same."""
        if not self.running:
            raise ShuttingDown("spool is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(fn, future, loop))
        return future

    def submit_together(self, run_all: Callable[[sqlite3.Connection, list[Any]], list[T]],
                        item: Any) -> asyncio.Future[T]:
        """`submit`, for a job that runs together with the others of its `run_all` in the same
        commit: run_all(conn, their items) must do what each would alone (the one-by-one retry
        still runs it alone, as run_all(conn, [item]))."""
        if not self.running:
            raise ShuttingDown("spool is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(functools.partial(_alone, run_all, item), future, loop,
                            run_all, item))
        return future

    def _run(self, ready: asyncio.Future[sqlite3.Connection],
             loop: asyncio.AbstractEventLoop) -> None:
        try:
            conn = schema.open_writer(self.path)
        except (sqlite3.Error, OSError, SpoolError) as exc:
            error = exc if isinstance(exc, SpoolError) else SpoolError(
                f"cannot open spool {self.path}: {exc}")
            _Job(lambda c: None, ready, loop).settle(error=error)
            return
        _Job(lambda c: None, ready, loop).settle(conn)
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
                stop = _STOP in batch
                self._commit_batch(conn, [job for job in batch if isinstance(job, _Job)])
                if stop:
                    break
        finally:
            conn.close()
            self._fail_pending()

    def _fail_pending(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if isinstance(job, _Job):
                job.settle(error=ShuttingDown("spool is closed"))

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        # The writer thread needs the GIL back after every statement, and a busy event loop
        # holds it: statements are what a commit waits for. So a batch first runs without a
        # savepoint per job; only if something fails is it run again, each job in its own
        # savepoint, so that one bad job does not take its neighbours down. (A job may thus
        # run twice: jobs only touch the database, and the first run was rolled back.)
        try:
            conn.execute(sql.BEGIN_WRITE)
            results = _run_jobs(conn, batch)
            conn.execute(sql.COMMIT)
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(sql.ROLLBACK)
            if len(batch) > 1:
                self._commit_one_by_one(conn, batch)
            else:
                batch[0].settle(error=as_spool_error(exc))
            return
        self.commits += 1
        _settle_all([(job, result, None) for job, result in zip(batch, results, strict=True)])

    def _commit_one_by_one(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        outcomes: list[Outcome] = []
        try:
            conn.execute(sql.BEGIN_WRITE)
            for job in batch:
                conn.execute(sql.SAVEPOINT)
                try:
                    result = job.fn(conn)
                except Exception as exc:
                    conn.execute(sql.ROLLBACK_TO_SAVEPOINT)
                    conn.execute(sql.RELEASE_SAVEPOINT)
                    outcomes.append((job, None, as_spool_error(exc)))
                else:
                    conn.execute(sql.RELEASE_SAVEPOINT)
                    outcomes.append((job, result, None))
            conn.execute(sql.COMMIT)
            self.commits += 1
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(sql.ROLLBACK)
            error = as_spool_error(exc)
            log.error("spool commit failed: %s", error)
            _settle_all([(job, None, error) for job in batch])
            return
        _settle_all(outcomes)


def _alone(run_all: RunAll, item: Any, conn: sqlite3.Connection) -> Any:
    return run_all(conn, [item])[0]


def _run_jobs(conn: sqlite3.Connection, batch: list[_Job]) -> list[Any]:
    """Each job's result, in order. Jobs that run together go first, a call per kind: within
    one commit nothing depends on the order its jobs were queued in."""
    results: list[Any] = [None] * len(batch)
    kinds: dict[RunAll, list[int]] = {}
    for n, job in enumerate(batch):
        if job.run_all is not None:
            kinds.setdefault(job.run_all, []).append(n)
    for run_all, positions in kinds.items():
        done = run_all(conn, [batch[n].item for n in positions])
        for n, result in zip(positions, done, strict=True):
            results[n] = result
    for n, job in enumerate(batch):
        if job.run_all is None:
            results[n] = job.fn(conn)
    return results


class Readers:
    """Read connections of their own, used from worker threads.

    For queries that change nothing (queue list, metrics, a message's history): in WAL mode they
    read a snapshot while the writer goes on committing, where on the writer thread a long one
    would hold up every accept behind it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.closed = False
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._read, fn)

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            conn: sqlite3.Connection | None = self._idle.get_nowait()
        except queue.Empty:
            conn = None
        try:
            if conn is None:
                conn = schema.open_reader(self.path)
            conn.execute(sql.BEGIN_READ)
            try:
                return fn(conn)
            finally:
                conn.execute(sql.ROLLBACK)
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


def as_spool_error(exc: BaseException) -> SpoolError:
    if isinstance(exc, SpoolError):
        return exc
    return SpoolError(f"{type(exc).__name__}: {exc}")
