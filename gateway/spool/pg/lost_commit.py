"""A commit whose answer was lost (the connection broke during the transaction or its COMMIT):
which of its messages did the database store? Asked on a new connection once the server
process that ran the commit is gone, so the answer cannot change after it is given. Those
stored are answered 250; the rest 451, and only if the database stays away past
LOOKUP_PATIENCE may one that was stored come again (twice, never lost)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from gateway.spool.commit import Pending
from gateway.spool.pg import sql
from gateway.spool.pg.wire import LOST
from gateway.spool.rows import NewMessage

log = logging.getLogger("smtp2pulse.spool")

# How long a commit whose answer was lost looks for the messages it held (the client waits).
LOOKUP_PATIENCE = 10.0


async def stored_after_loss(
    connect: Callable[[], Awaitable[asyncpg.Connection]],
    closed: Callable[[], bool],
    batch: list[Pending],
    backend: int,
) -> list[tuple[Pending, str]]:
    """The accepts of a commit whose answer was lost that it did store, with their queue
    ids, asked on a new connection once the server process that ran it (`backend`) is gone;
    none if the database cannot be asked in time."""
    accepts = {
        job.item.queue_id: job
        for job in batch
        if isinstance(job.item, NewMessage) and not job.future.done()
    }
    if not accepts:
        return []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LOOKUP_PATIENCE
    while not closed() and loop.time() < deadline:
        try:
            conn = await connect()
            try:
                while await conn.fetchval(sql.BACKEND_ALIVE, backend):
                    if loop.time() >= deadline:
                        raise TimeoutError("the commit's server process is still there")
                    await asyncio.sleep(0.1)
                rows = await conn.fetch(sql.STORED_AMONG, list(accepts))
            finally:
                await conn.close()
        except LOST:
            await asyncio.sleep(0.5)
            continue
        stored = [(accepts[row["id"]], row["id"]) for row in rows]
        log.warning(
            "spool database connection lost during a commit of %d messages: %d of them were stored",
            len(accepts),
            len(stored),
        )
        return stored
    log.error(
        "spool database connection lost during a commit of %d messages, and it could"
        " not be asked which were stored: answered 451 (one stored may come again)",
        len(accepts),
    )
    return []
