"""How the spool's shared logic speaks to a database it never sees.

A job is a generator: it yields each statement it wants run (a `Query`) and is sent back the
result, or has the database's error thrown in where it yielded. The SQLite backend runs a job
synchronously on its writer thread, the PostgreSQL backend awaits each statement on its
connection; both with the drivers below. So every decision (what a row means, what an outcome
records, how a batch commits) is written once, above the two, and a backend is only its
statements and its connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Fetch(Enum):
    """What a statement's result is sent back as."""

    ROWS = "rows"  # every row, each read by column name
    ONE = "one"  # the first row, or None
    VALUE = "value"  # the first column of the first row, or None
    COUNT = "count"  # how many rows it changed
    MANY = "many"  # run once per parameter tuple in `params`; nothing is sent back


@dataclass(frozen=True, slots=True)
class Query:
    statement: str
    params: Sequence[Any] = ()
    fetch: Fetch = Fetch.COUNT


# A job: yields Queries, is sent their results, returns its own.
Job = Generator[Query, Any, T]


class Row(Protocol):
    """A row read by column name: sqlite3.Row, or asyncpg's Record."""

    def __getitem__(self, key: str) -> Any: ...


def drive(job: Job[T], execute: Callable[[Query], Any]) -> T:
    """Run a job to its end, each of its statements by `execute` (SQLite's writer thread)."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            query = job.send(reply) if error is None else job.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        reply, error = None, None
        try:
            reply = execute(query)
        except Exception as exc:  # the job decides: it may roll back to a savepoint
            error = exc


async def drive_async(job: Job[T], execute: Callable[[Query], Awaitable[Any]]) -> T:
    """`drive` for a connection whose statements are awaited (PostgreSQL)."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            query = job.send(reply) if error is None else job.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        reply, error = None, None
        try:
            reply = await execute(query)
        except Exception as exc:
            error = exc
