"""Group commit, the same for every backend: the jobs waiting when a commit starts share it.

A commit costs a flush to disk (SQLite's fsync, PostgreSQL's WAL flush), so every job that
arrived while the previous one ran shares the next. A job's future settles only after the
COMMIT that holds its work returned: that is what makes a 250 a promise.

The batch first runs without a savepoint per job (each statement is a round trip, or for
SQLite a wait for the GIL behind a busy event loop). Only if something fails is it run again,
each job in its own savepoint, so that one bad job (or one message the database refuses) does
not take its neighbours down; a job may thus run twice, which is harmless because jobs only
touch the database and the first run was rolled back. Jobs submitted "together" (the accept
path's inserts) are handed to their function all at once, and alone on the second run.

A connection lost mid-commit (PostgreSQL) is not a bad job: `lost` says so, and the error goes
up to the backend, for which the outcome of the whole batch is unknown.

Each backend's link (its connections, and the thread or task that commits) meets `Link`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from gateway.errors import SpoolError
from gateway.spool.steps import Job, Query

log = logging.getLogger("smtp2pulse.spool")
T = TypeVar("T")

# Runs many jobs' items in one go: the job gives each item's result, in order.
Together = Callable[[list[Any]], Job[list[Any]]]

SAVEPOINT = Query("SAVEPOINT job")
ROLLBACK_TO_SAVEPOINT = Query("ROLLBACK TO SAVEPOINT job")
RELEASE_SAVEPOINT = Query("RELEASE SAVEPOINT job")
COMMIT = Query("COMMIT")
ROLLBACK = Query("ROLLBACK")


class Link(Protocol):
    """A backend's connections: writes in group commits, reads beside them."""

    commits: int  # how many group commits ran, for tests and metrics

    @property
    def healthy(self) -> bool: ...

    async def start(self) -> None:
        """Connect, creating or upgrading the tables; raises SpoolError if it cannot."""
        ...

    async def stop(self) -> None: ...

    def submit(self, make: Callable[[], Job[T]], *, wakes: bool = False) -> asyncio.Future[T]:
        """Queue a job for the next group commit; the future resolves after its COMMIT.
        Cancelling it only stops the waiting. `wakes`: it makes something due (PostgreSQL
        then tells every gateway; a commit whose caller stopped waiting wakes this one's
        worker, as that caller would have)."""
        ...

    def submit_together(
        self, run_all: Together, item: Any, *, wakes: bool = False
    ) -> asyncio.Future[Any]:
        """`submit` for an item that run_all stores together with the others of its commit."""
        ...

    async def read(self, make: Callable[[], Job[T]]) -> T:
        """Run a job that changes nothing on a reader, beside the writer."""
        ...


@dataclass(slots=True, eq=False)
class Pending:
    """A job waiting for a group commit, and who waits for its result."""

    make: Callable[[], Job[Any]]  # a fresh run of the job (it may run twice)
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    together: Together | None = None
    item: Any = None
    wakes: bool = False


def alone(run_all: Together, item: Any) -> Callable[[], Job[Any]]:
    """The job of one item run alone (a `together` job's second run, in its own savepoint)."""

    def make() -> Job[Any]:
        return _alone(run_all, item)

    return make


def _alone(run_all: Together, item: Any) -> Job[Any]:
    return (yield from run_all([item]))[0]


Outcome = tuple[Pending, Any, BaseException | None]


def as_spool_error(exc: BaseException) -> SpoolError:
    if isinstance(exc, SpoolError):
        return exc
    return SpoolError(f"{type(exc).__name__}: {exc}")


def group_commit(
    batch: Sequence[Pending],
    begin: Query,
    finish: Sequence[Query] = (),
    lost: Callable[[BaseException], bool] = lambda exc: False,
) -> Job[tuple[list[Outcome], bool]]:
    """Each job's outcome, and whether a COMMIT happened. `finish` runs just before COMMIT
    (PostgreSQL's NOTIFY to the other gateways)."""
    try:
        yield begin
        results = yield from _run_all(batch)
        for query in finish:  # noqa: UP028 - a list cannot take the results sent back
            yield query
        yield COMMIT
    except Exception as exc:
        if lost(exc):
            raise
        yield from _rollback()
        if len(batch) > 1:
            return (yield from _one_by_one(batch, begin, finish, lost))
        return [(batch[0], None, as_spool_error(exc))], False
    return [(job, result, None) for job, result in zip(batch, results, strict=True)], True


def _run_all(batch: Sequence[Pending]) -> Job[list[Any]]:
    """Each job's result, in order. Jobs that run together go first, one call per kind:
    within one commit nothing depends on the order its jobs were queued in."""
    results: list[Any] = [None] * len(batch)
    kinds: dict[Together, list[int]] = {}
    for n, job in enumerate(batch):
        if job.together is not None:
            kinds.setdefault(job.together, []).append(n)
    for run_all, positions in kinds.items():
        done = yield from run_all([batch[n].item for n in positions])
        for n, result in zip(positions, done, strict=True):
            results[n] = result
    for n, job in enumerate(batch):
        if job.together is None:
            results[n] = yield from job.make()
    return results


def _one_by_one(
    batch: Sequence[Pending],
    begin: Query,
    finish: Sequence[Query],
    lost: Callable[[BaseException], bool],
) -> Job[tuple[list[Outcome], bool]]:
    outcomes: list[Outcome] = []
    try:
        yield begin
        for job in batch:
            yield SAVEPOINT
            try:
                result = yield from job.make()
            except Exception as exc:
                if lost(exc):
                    raise
                yield ROLLBACK_TO_SAVEPOINT
                yield RELEASE_SAVEPOINT
                outcomes.append((job, None, as_spool_error(exc)))
            else:
                yield RELEASE_SAVEPOINT
                outcomes.append((job, result, None))
        for query in finish:  # noqa: UP028 - a list cannot take the results sent back
            yield query
        yield COMMIT
    except Exception as exc:
        if lost(exc):
            raise
        yield from _rollback()
        error = as_spool_error(exc)
        log.error("spool commit failed: %s", error)
        return [(job, None, error) for job in batch], False
    return outcomes, True


def _rollback() -> Job[None]:
    with contextlib.suppress(Exception):  # nothing to undo: the transaction never began
        yield ROLLBACK


def settle(outcomes: list[Outcome]) -> bool:
    """Hand results to their futures, on the futures' own loop (see the backends' links).
    True when a job that makes something due committed after its caller gave up waiting: the
    caller would have woken the worker, so now the link must."""
    unheard = False
    for job, result, error in outcomes:
        if job.future.done():  # its caller gave up waiting (the write still happened)
            unheard = unheard or (job.wakes and error is None)
            continue
        if error is None and isinstance(result, Exception):
            error = result  # one item's own answer (a message a limit refused), not a failure
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
    return unheard
