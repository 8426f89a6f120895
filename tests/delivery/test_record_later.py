"""A spool that cannot record what the platform said: the outcomes are kept and written once it
can, and nothing is sent twice. PostgreSQL restarted under in-flight requests; an SQLite file
held by another connection's exclusive lock past the writer's busy timeout."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from tests.conftest import Running, eventually, text_message
from tests.fakeplatform import FakePlatform, Reply
from tests.pgserver import PgServer

NUMBERS = [f"7900100{n:04d}@sms.local" for n in range(5)]


def sent_to(platform: FakePlatform) -> Counter[str]:
    return Counter(message["sent_to"] for message in platform.messages)


async def submit_all(gw: Running, batch: bool) -> list[str]:
    if batch:  # one message to five: with api.batch_size 5, one request
        return [await gw.submit(text_message(), NUMBERS)]
    return [await gw.submit(text_message(f"m{n}"), to) for n, to in enumerate(NUMBERS)]


async def all_sent(gw: Running, queue_ids: list[str], within: float) -> None:
    for queue_id in queue_ids:
        assert set(await gw.wait_final(queue_id, within=within)) == {"sent"}


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
async def test_outcomes_wait_out_a_locked_sqlite_file(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform, batch: bool
) -> None:
    gw = await start_gateway({"api": {"batch_size": 5 if batch else 1}})
    platform.default = Reply(delay=1.0)
    queue_ids = await submit_all(gw, batch)
    await platform.wait_for(1 if batch else len(NUMBERS))
    # While the requests are out, another connection takes the file: the writer's BEGIN waits
    # its busy timeout (5 s), fails, and fails again one by one; the lock is held past both.
    locker = sqlite3.connect(gw.gateway.config.spool.path, isolation_level=None, timeout=10)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        await asyncio.sleep(11.5)
    finally:
        locker.close()
    # Recorded within seconds of the file coming back, long before the leases (api.timeout
    # + 15 s) would have run out and sent them again.
    await all_sent(gw, queue_ids, within=5.0)
    assert sent_to(platform) == Counter(n.split("@")[0] for n in NUMBERS)


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
async def test_outcomes_wait_out_a_postgresql_restart(
    start_on_pg: Callable[..., Awaitable[Running]],
    pg_server: PgServer,
    platform: FakePlatform,
    batch: bool,
) -> None:
    gw = await start_on_pg({"api": {"batch_size": 5 if batch else 1, "timeout": "5s"}})
    platform.default = Reply(delay=2.0)
    queue_ids = await submit_all(gw, batch)
    await platform.wait_for(1 if batch else len(NUMBERS))
    # Off the loop: the gateway goes on meanwhile, its requests are answered while the server
    # is down, and recording their outcomes fails.
    await asyncio.to_thread(pg_server.stop, "fast")
    try:
        await asyncio.sleep(2.0)
    finally:
        await asyncio.to_thread(pg_server.start)
    await all_sent(gw, queue_ids, within=10.0)
    assert sent_to(platform) == Counter(n.split("@")[0] for n in NUMBERS)


async def test_outcomes_kept_at_stop_are_recorded_within_the_grace(
    start_on_pg: Callable[..., Awaitable[Running]],
    pg_server: PgServer,
    pg_url: str,
    platform: FakePlatform,
) -> None:
    gw = await start_on_pg({"api": {"timeout": "5s"}, "shutdown_timeout": "15s"})
    platform.default = Reply(delay=2.0)
    await submit_all(gw, batch=False)
    await platform.wait_for(len(NUMBERS))
    await asyncio.to_thread(pg_server.stop, "fast")
    try:
        await eventually(lambda: gw.gateway.worker.busy == 0, within=10)
        assert gw.gateway.worker.recorder.kept == len(NUMBERS)
        # Asked to stop while the database is away: the drain's grace is spent writing them.
        stopping = asyncio.create_task(gw.gateway.stop())
        await asyncio.sleep(0.5)
    finally:
        await asyncio.to_thread(pg_server.start)
    await stopping
    conn = await asyncpg.connect(pg_url)
    try:
        states = [row["state"] for row in await conn.fetch("SELECT state FROM deliveries")]
    finally:
        await conn.close()
    assert states == ["sent"] * len(NUMBERS)
    assert sent_to(platform) == Counter(n.split("@")[0] for n in NUMBERS)


async def test_a_reply_with_a_nul_is_recorded_on_postgresql(
    start_on_pg: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    """PostgreSQL's text holds no NUL: a refusal whose words carry one was never recorded,
    and its delivery held (or sent again) for ever; the other deliveries go on regardless."""
    gw = await start_on_pg()
    platform.default = Reply(body='{"type": "error", "msg": "bad\\u0000number"}')
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    assert await gw.wait_final(queue_id) == ["refused"]
    platform.default = Reply()
    other = await gw.submit(text_message(), "79001234568@sms.local")
    assert await gw.wait_final(other) == ["sent"]
    assert gw.gateway.worker.recorder.kept == 0
    assert len(platform.requests) == 2
