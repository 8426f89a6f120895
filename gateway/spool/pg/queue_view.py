"""The PostgreSQL spool as the operator and the monitoring see it: `smtp2pulse queue`, the
status page's search and overview, metrics, health.

The same queries as the SQLite spool's queue_view.py and search.py, each a function of a
connection that PgSpool hands to its link: reads on a reader connection, beside the writer;
a retry or drop in the next group commit like any other write.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from gateway.spool import queue_view, search
from gateway.spool.pg import sql
from gateway.spool.rows import (
    DeliveryLine,
    MessageDetail,
    MessageSummary,
    Overview,
    Search,
    SpoolStats,
)

Clock = Callable[[], float]


async def stats(conn: asyncpg.Connection, clock: Clock) -> SpoolStats:
    counts = {row["state"]: row["n"] for row in await conn.fetch(sql.COUNT_BY_STATE)}
    oldest = await conn.fetchval(sql.OLDEST_PENDING)
    return SpoolStats(counts, 0.0 if oldest is None else max(0.0, clock() - oldest))


async def unconfirmed(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(sql.COUNT_UNCONFIRMED))


async def probe_writable(conn: asyncpg.Connection, clock: Clock) -> None:
    await conn.execute(sql.PROBE_WRITE, str(clock()))


async def list_messages(conn: asyncpg.Connection, include_finished: bool,
                        limit: int) -> list[MessageSummary]:
    statement = sql.LIST_ALL if include_finished else sql.LIST_UNFINISHED
    return queue_view.summaries(await conn.fetch(statement, limit, limit))


async def show_message(conn: asyncpg.Connection, queue_id: str) -> MessageDetail | None:
    message = await conn.fetchrow(sql.SHOW_MESSAGE, queue_id)
    if message is None:
        return None
    return queue_view.detail(message, [
        (d, await conn.fetch(sql.SHOW_EVENTS, d["id"]))
        for d in await conn.fetch(sql.SHOW_DELIVERIES, queue_id)])


async def retry_message(conn: asyncpg.Connection, clock: Clock, queue_id: str) -> int | None:
    """Make every unfinished or failed delivery of a message due now; None if no such message."""
    if await conn.fetchval(sql.MESSAGE_EXISTS, queue_id) is None:
        return None
    now = clock()
    ids = [row["id"] for row in await conn.fetch(sql.RETRY_MESSAGE, now, now, queue_id)]
    await conn.executemany(sql.INSERT_EVENT,
                           [(i, now, "retry", "requested by operator") for i in ids])
    return len(ids)


async def drop_message(conn: asyncpg.Connection, queue_id: str) -> bool:
    return sql.rows_changed(await conn.execute(sql.DROP_MESSAGE, queue_id)) > 0


async def find_deliveries(conn: asyncpg.Connection, query: Search) -> list[DeliveryLine]:
    statement = sql.FIND_UNFINISHED if query.pending_only else sql.FIND_DELIVERIES
    values = search.parameters(query)
    rows = await conn.fetch(statement, *[values[name] for name in sql.FIND_PARAMETERS])
    return [search.line(row) for row in rows]


async def overview(conn: asyncpg.Connection, clock: Clock, errors: int) -> Overview:
    counts = {row["shown"]: row["n"] for row in await conn.fetch(sql.COUNT_BY_SHOWN_STATE)}
    oldest = await conn.fetchrow(sql.OLDEST_WAITING)
    sent = await conn.fetchval(sql.SENT_SINCE, clock() - search.SENT_WINDOW)
    failed = await conn.fetch(sql.RECENT_ERRORS, errors)
    return Overview(counts, None if oldest is None else search.line(oldest), sent,
                    [search.line(row) for row in failed])
