"""The PostgreSQL spool against a real PostgreSQL server: what several gateways sharing one
database rely on (leases that never overlap, takeover after expiry, wake-ups, schema made once),
and what a lost database must not do (a 250 without a commit)."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from gateway.errors import SpoolError
from gateway.spool.pg import schema as pg_schema
from gateway.spool.pg.store import PgSpool
from gateway.spool.rows import IncomingMessage, NewDelivery
from tests.conftest import eventually
from tests.pgserver import PgServer


def message(
    *recipients: str, text: str = "hello", mail_from: str = "crm@corp.test"
) -> IncomingMessage:
    return IncomingMessage(
        mail_from=mail_from,
        peer="127.0.0.1",
        helo="crm",
        raw=b"Subject: x\r\n\r\nbody\r\n",
        deliveries=tuple(
            NewDelivery(r, {"type": "sms", "sent_to": r, "sent_text": text}) for r in recipients
        ),
    )


async def started(url: str, **kwargs: object) -> PgSpool:
    spool = PgSpool(url, **kwargs)  # type: ignore[arg-type]
    await spool.start()
    return spool


async def test_an_accepted_message_is_committed_and_leased_whole(pg_url: str) -> None:
    spool = await started(pg_url)
    long_text = "Заказ готов. " * 40  # shared between the deliveries, stored once
    queue_id = await spool.accept(message("79001234567", "79007654321", text=long_text))
    conn = await asyncpg.connect(pg_url)  # another connection sees it: it is committed
    assert (
        await conn.fetchval("SELECT count(*) FROM deliveries WHERE message_id = $1", queue_id) == 2
    )
    await conn.close()
    leased = await spool.lease(10, 60)
    assert [(d.queue_id, d.recipient, d.request["sent_text"]) for d in leased] == [
        (queue_id, "79001234567", long_text),
        (queue_id, "79007654321", long_text),
    ]
    await spool.stop()


async def test_two_gateways_never_lease_the_same_delivery(pg_url: str) -> None:
    first, second = await started(pg_url), await started(pg_url)
    await asyncio.gather(*(first.accept(message(f"7900000{i:04d}")) for i in range(200)))
    taken: list[int] = []
    for _ in range(12):
        batches = await asyncio.gather(first.lease(10, 60), second.lease(10, 60))
        taken += [d.id for batch in batches for d in batch]
    assert len(taken) == 200 and len(set(taken)) == 200
    assert await first.lease(10, 60) == [] and await second.lease(10, 60) == []
    await first.stop()
    await second.stop()


async def test_a_live_lease_is_not_taken_an_expired_one_is(pg_url: str) -> None:
    now = [time.time()]
    first = await started(pg_url, clock=lambda: now[0])
    second = await started(pg_url, clock=lambda: now[0])
    await first.accept(message("79001234567"))
    (mine,) = await first.lease(10, 70)
    now[0] += 69
    assert await second.lease(10, 70) == []  # still the first gateway's
    now[0] += 2  # the first died: its lease ran out
    (taken,) = await second.lease(10, 70)
    assert taken.id == mine.id and taken.attempts == 0
    # A restart does not take leases back: they may be another gateway's live sends.
    third = PgSpool(pg_url, clock=lambda: now[0])
    assert await third.start() == 0
    assert await third.lease(10, 70) == []
    for spool in (first, second, third):
        await spool.stop()


async def test_a_commit_on_one_gateway_wakes_the_others(pg_url: str) -> None:
    woken = asyncio.Event()
    listener = await started(pg_url, on_notify=woken.set)
    sender = await started(pg_url)
    await asyncio.sleep(0.3)  # its LISTEN is in place
    woken.clear()
    await sender.accept(message("79001234567"))
    await asyncio.wait_for(woken.wait(), 5)
    await listener.stop()
    await sender.stop()


async def test_two_gateways_starting_at_once_make_the_schema_once(pg_url: str) -> None:
    spools = [PgSpool(pg_url) for _ in range(4)]
    await asyncio.gather(*(spool.start() for spool in spools))
    conn = await asyncpg.connect(pg_url)
    assert await conn.fetchval("SELECT value FROM meta WHERE key = 'schema_version'") == str(
        pg_schema.SCHEMA_VERSION
    )
    await conn.close()
    for spool in spools:
        await spool.stop()


async def test_a_lost_database_refuses_to_store_and_recovers(
    pg_server: PgServer, pg_url: str
) -> None:
    spool = await started(pg_url)
    await spool.accept(message("79001234567"))
    pg_server.stop("immediate")
    try:
        with pytest.raises(SpoolError):
            await spool.accept(message("79007654321"))
        assert not spool.healthy
    finally:
        pg_server.start()

    async def stored() -> bool:
        try:
            await spool.accept(message("79001112233"))
        except SpoolError:
            return False
        return True

    deadline = time.monotonic() + 20
    while not await stored():
        assert time.monotonic() < deadline, "the spool did not reconnect"
        await asyncio.sleep(0.2)
    await eventually(lambda: spool.healthy)
    conn = await asyncpg.connect(pg_url)
    recipients = {r["recipient"] for r in await conn.fetch("SELECT recipient FROM deliveries")}
    await conn.close()
    assert "79001234567" in recipients and "79001112233" in recipients
    await spool.stop()


async def test_an_unreachable_database_at_start_is_a_clear_error() -> None:
    spool = PgSpool("postgresql://nobody@127.0.0.1:9/none")
    with pytest.raises(SpoolError, match="cannot reach spool"):
        await spool.start()


async def test_gateways_of_one_spool_share_its_callback_secret(pg_url: str) -> None:
    first, second = await started(pg_url), await started(pg_url)
    secrets = {await first.callback_secret(), await second.callback_secret()}
    assert len(secrets) == 1 and len(secrets.pop()) >= 32
    await first.stop()
    await second.stop()


async def test_a_spool_of_the_first_release_is_upgraded_in_place(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(pg_schema.SCHEMA)  # version 1, as the first release made it
        await conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
        spool = await started(pg_url)
        await spool.stop()
        assert await conn.fetchval("SELECT value FROM meta WHERE key = 'schema_version'") == str(
            pg_schema.SCHEMA_VERSION
        )
        pending = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'deliveries_pending'"
        )
        assert "unconfirmed" in pending
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_indexes WHERE indexname = 'deliveries_unconfirmed'"
            )
            == 1
        )
    finally:
        await conn.close()


async def test_a_spool_newer_than_the_program_is_refused_untouched(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)")
        newer = str(pg_schema.SCHEMA_VERSION + 1)
        await conn.execute("INSERT INTO meta VALUES ('schema_version', $1)", newer)
        with pytest.raises(SpoolError, match="newer than this program"):
            await PgSpool(pg_url).start()
        assert await conn.fetchval("SELECT value FROM meta") == newer
        assert await conn.fetchval("SELECT to_regclass('messages')") is None
    finally:
        await conn.close()
