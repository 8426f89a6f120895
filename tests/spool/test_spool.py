"""The spool on its own: upgrades, group commit, leases, states, callbacks, bounces."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import SpoolError
from gateway.spool import admin
from gateway.spool.sql import INSERT_ROWS
from gateway.spool.states import BounceState, State, StatusClass
from gateway.spool.store import (
    SCHEMA,
    SCHEMA_VERSION,
    IncomingMessage,
    NewDelivery,
    Result,
    Spool,
)


def incoming(n: int = 0) -> IncomingMessage:
    return IncomingMessage(mail_from="a@corp.test", peer="127.0.0.1", helo="c", raw=b"raw",
                           deliveries=(NewDelivery(f"7900000000{n}@sms.local",
                                                   {"sent_to": f"7900000000{n}"}),))


async def test_a_version_1_spool_is_upgraded_with_its_mail(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA)
    old.execute("INSERT INTO messages VALUES ('Q1', 1.0, 'a@b.c', '127.0.0.1', 'h', NULL, 3,"
                " x'616263')")
    old.execute("INSERT INTO deliveries (message_id, recipient, request, state,"
                " next_attempt_at, updated_at) VALUES ('Q1', 'r@sms.local', '{}', 'queued',"
                " 1.0, 1.0)")
    old.execute("PRAGMA user_version=1")
    old.commit()
    old.close()

    spool = Spool(path)
    await spool.start()
    try:
        detail = await admin.show_message(spool, "Q1")
        assert detail is not None and detail.deliveries[0].state == "queued"
        assert detail.deliveries[0].status is None and detail.deliveries[0].bounce is None
        [leased] = await spool.lease(10, 60)
        assert leased.message_id == "Q1"
    finally:
        await spool.stop()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_concurrent_stores_share_commits(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3")
    await spool.start()
    try:
        before = spool.commits
        ids = await asyncio.gather(*(spool.accept(incoming(i % 10)) for i in range(200)))
        assert len(set(ids)) == 200
        assert spool.commits - before < 200     # grouped: fewer fsyncs than messages
        leased = await spool.lease(500, 60)
        assert len(leased) == 200
        assert await spool.lease(500, 60) == []   # leased rows are not handed out twice
    finally:
        await spool.stop()


async def test_a_failing_job_does_not_take_its_batch_down(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3")
    await spool.start()
    try:
        def broken(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO nowhere VALUES (1)")
        results = await asyncio.gather(spool.accept(incoming()), spool.run(broken),
                                       spool.accept(incoming(1)), return_exceptions=True)
        assert isinstance(results[0], str) and isinstance(results[2], str)
        assert type(results[1]).__name__ == "SpoolError"
        assert len(await admin.list_messages(spool)) == 2
    finally:
        await spool.stop()


async def test_a_commit_stores_many_messages_each_with_its_own_deliveries(
        tmp_path: Path) -> None:
    # The accept path's inserts of one commit go as a few multi-row statements: more messages
    # and more deliveries than one statement takes, each still stored under its own queue id.
    spool = Spool(tmp_path / "s.sqlite3")
    await spool.start()
    try:
        def message(n: int) -> IncomingMessage:
            return IncomingMessage(
                mail_from=f"m{n}@corp.test", peer="127.0.0.1", helo="c", raw=f"raw {n}".encode(),
                deliveries=tuple(NewDelivery(f"7900{n:03d}{r:04d}@sms.local",
                                             {"sent_to": f"7900{n:03d}{r:04d}", "n": str(n)})
                                 for r in range(n % 5 + 1)))
        count = 3 * INSERT_ROWS + 7
        before = spool.commits
        ids = await asyncio.gather(*(spool.accept(message(n)) for n in range(count)))
        assert spool.commits - before < count
        for n, queue_id in enumerate(ids):
            detail = await admin.show_message(spool, queue_id)
            assert detail is not None and detail.mail_from == f"m{n}@corp.test"
            assert detail.size == len(f"raw {n}")
            assert sorted(d.recipient for d in detail.deliveries) == [
                f"7900{n:03d}{r:04d}@sms.local" for r in range(n % 5 + 1)]
        leased = await spool.lease(10_000, 60)
        assert len(leased) == sum(n % 5 + 1 for n in range(count))
        assert all(d.request["n"] == str(int(d.recipient[4:7])) for d in leased)
    finally:
        await spool.stop()


async def test_a_message_the_database_refuses_leaves_the_others_in_its_commit(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3")
    await spool.start()
    try:
        bad = dataclasses.replace(incoming(5), peer=None)   # type: ignore[arg-type]
        results = await asyncio.gather(*(spool.accept(incoming(n)) for n in range(4)),
                                       spool.accept(bad),
                                       *(spool.accept(incoming(n)) for n in range(4)),
                                       return_exceptions=True)
        assert type(results[4]).__name__ == "SpoolError"
        assert "NOT NULL" in str(results[4])
        stored = [r for r in results if isinstance(r, str)]
        assert len(stored) == 8
        assert sorted(m.id for m in await admin.list_messages(spool)) == sorted(stored)
    finally:
        await spool.stop()


async def test_expired_lease_is_handed_out_again(tmp_path: Path) -> None:
    clock = [1000.0]
    spool = Spool(tmp_path / "s.sqlite3", clock=lambda: clock[0])
    await spool.start()
    try:
        await spool.accept(incoming())
        assert len(await spool.lease(10, 30)) == 1
        clock[0] += 29
        assert await spool.lease(10, 30) == []
        clock[0] += 2
        assert len(await spool.lease(10, 30)) == 1   # its sender died without a word
    finally:
        await spool.stop()


async def test_a_spool_newer_than_the_program_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    newer = sqlite3.connect(path)
    newer.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    newer.close()
    spool = Spool(path)
    with pytest.raises(SpoolError, match="newer than this program"):
        await spool.start()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


async def test_states_are_stored_as_the_words_earlier_releases_wrote(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3")
    await spool.start()
    try:
        queue_id = await spool.accept(incoming())
        [delivery] = await spool.lease(10, 60)
        await spool.record(Result(delivery.id, State.REFUSED, 0.0, "refused", "no", bounce=True))
        stored = await spool.read(lambda conn: conn.execute(
            "SELECT state, bounce FROM deliveries").fetchall())
        assert stored == [("refused", "pending")]
        detail = await spool.show_message(queue_id)
        assert detail is not None
        assert detail.deliveries[0].state is State.REFUSED
        assert detail.deliveries[0].bounce is BounceState.PENDING
        [pending] = await spool.pending_bounces()
        assert (pending.queue_id, pending.state, pending.reason) == (queue_id, "refused", "no")
        await spool.settle_bounce(delivery.id, BounceState.SENT)
        assert await spool.pending_bounces() == []
        assert await spool.retry_message(queue_id) == 1
        [events] = [d.events for d in (await spool.show_message(queue_id) or detail).deliveries]
        assert [kind for _, kind, _ in events] == ["received", "refused", "bounce sent", "retry"]
    finally:
        await spool.stop()


async def test_a_callback_reads_kannel_status_from_the_request_by_name(tmp_path: Path) -> None:
    # A text that merely mentions kannel_status must not make its delivery a Kannel one.
    spool = Spool(tmp_path / "s.sqlite3")
    await spool.start()
    try:
        told: list[bool] = []

        def classify(kannel: bool) -> StatusClass:
            told.append(kannel)
            return StatusClass.DELIVERED

        for request in ({"sent_text": '"kannel_status": "1"'}, {"kannel_status": "1"}):
            queue_id = await spool.accept(IncomingMessage(
                mail_from="a@corp.test", peer="127.0.0.1", helo="c", raw=b"raw",
                deliveries=(NewDelivery("79000000000@sms.local", request),)))
            [delivery] = await spool.lease(10, 60)
            assert await spool.record_status(delivery.id, queue_id, "", "1", classify,
                                             max_statuses=20) == ("recorded", "delivered")
            assert await spool.record_status(delivery.id, queue_id, "", "1", classify,
                                             max_statuses=20) == ("repeated", "delivered")
        assert told == [False, False, True, True]
        assert await spool.record_status(999, "nope", "", "1", classify,
                                         max_statuses=20) == ("unknown", "unknown")
    finally:
        await spool.stop()
