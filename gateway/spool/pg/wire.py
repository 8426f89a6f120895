"""What the PostgreSQL spool's connections share: how a job's `Query` step runs on an asyncpg
connection, which asyncpg errors mean the connection is gone, and a URL fit for a log line."""

from __future__ import annotations

from typing import Any

import asyncpg

from gateway.spool.pg import sql
from gateway.spool.steps import Fetch, Query

# asyncpg raises these when the server or the network went away, rather than the statement
# being wrong; any of them means: reconnect, and the outcome of what was running is unknown.
LOST = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
    TimeoutError,
)


def safe_url(url: str) -> str:
    """The URL with its password replaced, for logs and errors."""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, user_pass = head.partition("//")
    user = user_pass.split(":", 1)[0]
    return f"{scheme}//{user}:***@{tail}"


async def execute(conn: asyncpg.Connection, query: Query) -> Any:
    if query.fetch is Fetch.MANY:
        await conn.executemany(query.statement, query.params)
        return None
    if query.fetch is Fetch.ROWS:
        return await conn.fetch(query.statement, *query.params)
    if query.fetch is Fetch.ONE:
        return await conn.fetchrow(query.statement, *query.params)
    if query.fetch is Fetch.VALUE:
        return await conn.fetchval(query.statement, *query.params)
    return sql.rows_changed(await conn.execute(query.statement, *query.params))


def is_lost(exc: BaseException) -> bool:
    return isinstance(exc, LOST)
