"""A statement of a test's own, run by the spool itself: in its next group commit, on its
writer connection (where a PRAGMA such as max_page_count holds), whichever the backend."""

from __future__ import annotations

from typing import Any

from gateway.spool.interface import SpoolInterface
from gateway.spool.steps import Fetch, Job, Query


async def run_sql(spool: SpoolInterface, statement: str) -> list[tuple[Any, ...]]:
    """The rows it gives, as tuples (none for a statement that gives none)."""

    def job() -> Job[list[tuple[Any, ...]]]:
        rows = yield Query(statement, (), Fetch.ROWS)
        return [tuple(row) for row in rows]

    link = getattr(spool, "link")  # noqa: B009 - a BaseSpool's, not the interface's
    rows: list[tuple[Any, ...]] = await link.submit(job)
    return rows
