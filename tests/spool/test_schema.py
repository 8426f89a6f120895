"""The SQLite spool's file as earlier releases left it, and the indexes its statements rely on
(the PostgreSQL spool's upgrade is in test_pg_spool.py)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import SpoolError
from gateway.spool.rows import Search
from gateway.spool.sqlite import sql
from gateway.spool.sqlite.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, _statements
from gateway.spool.sqlite.store import SqliteSpool
from gateway.spool.states import BounceState, State, StatusClass

NOW = 1_700_000_000.0


def previous_release_spool(path: Path) -> None:
    """Schema 3 with a delivery in every state, written with the words as literals, the way the
    release before the State enum wrote them."""
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    for statement in _statements(SCHEMA) + _statements(MIGRATIONS[2]) + _statements(MIGRATIONS[3]):
        old.execute(statement)
    old.execute("PRAGMA user_version=3")
    old.execute(
        "INSERT INTO messages (id, received_at, mail_from, peer, helo, size, raw)"
        " VALUES ('0000000000A000001', ?, 'a@corp.test', '127.0.0.1', 'h', 3, x'616263')",
        (NOW,),
    )
    rows = [
        ("queued", None, None),
        ("sending", None, None),
        ("sent", "delivered", None),
        ("sent", "failed", "pending"),
        ("refused", None, "sent"),
        ("failed", None, "failed"),
        ("sent", "pending", None),
        ("sent", "unknown", None),
    ]
    for n, (state, status_class, bounce) in enumerate(rows):
        old.execute(
            "INSERT INTO deliveries (message_id, recipient, request, state,"
            " next_attempt_at, updated_at, status, status_class, bounce, last_error)"
            " VALUES ('0000000000A000001', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                f"7900111000{n}@sms.local",
                json.dumps({"sent_to": f"7900111000{n}"}),
                state,
                NOW + n,
                NOW,
                None if status_class is None else "x",
                status_class,
                bounce,
                "no" if state in ("refused", "failed") else None,
            ),
        )
    old.close()


async def test_a_spool_of_the_release_before_the_enums_reads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    previous_release_spool(path)
    spool = SqliteSpool(path, clock=lambda: NOW + 100)
    await spool.start(recover=False)  # keep the `sending` row as it was found
    try:
        detail = await spool.show_message("0000000000A000001")
        assert detail is not None
        assert [(d.state, d.status_class, d.bounce) for d in detail.deliveries] == [
            (State.QUEUED, None, None),
            (State.SENDING, None, None),
            (State.SENT, StatusClass.DELIVERED, None),
            (State.SENT, StatusClass.FAILED, BounceState.PENDING),
            (State.REFUSED, None, BounceState.SENT),
            (State.FAILED, None, BounceState.FAILED),
            (State.SENT, StatusClass.PENDING, None),
            (State.SENT, StatusClass.UNKNOWN, None),
        ]
        stats = await spool.stats()
        assert stats.by_state == {"queued": 1, "sending": 1, "sent": 4, "refused": 1, "failed": 1}
        assert stats.oldest_pending_age == 100
        assert len(await spool.find_deliveries(Search(pending_only=True))) == 2
        [bounce] = await spool.pending_bounces()
        assert (bounce.recipient, bounce.state) == ("79001110003@sms.local", State.SENT)
        assert await spool.next_due() == NOW
        # Both unfinished ones are due (the lease of the `sending` one ran out at NOW + 1).
        leased = await spool.lease(10, 60)
        assert [d.recipient for d in leased] == ["79001110000@sms.local", "79001110001@sms.local"]
        assert await spool.retry_message("0000000000A000001") == 2  # refused and failed
    finally:
        await spool.stop()


@pytest.mark.parametrize(
    ("statement", "params", "index"),
    [
        (sql.LEASE, (1.0, 1.0, 10), "deliveries_due"),
        (sql.NEXT_DUE, (), "deliveries_due"),
        (sql.PENDING_BOUNCES, (50,), "deliveries_bounce"),
        (sql.OLDEST_PENDING, (), "deliveries_pending"),
        (sql.OLDEST_WAITING, (), "deliveries_pending"),
        (sql.PURGE, (1.0,), "messages_by_arrival"),
        (sql.COUNT_UNCONFIRMED, (), "deliveries_unconfirmed"),
        (sql.RELEASE, (1.0, "[1, 2]"), "INTEGER PRIMARY KEY"),
    ],
)
async def test_the_statements_with_states_from_the_enum_use_the_partial_indexes(
    tmp_path: Path, statement: str, params: tuple[object, ...], index: str
) -> None:
    # The states are put into the statements' text from State; the planner takes a partial
    # index only for a WHERE spelled as the index's own, so a respelling would scan the backlog.
    path = tmp_path / "s.sqlite3"
    spool = SqliteSpool(path)
    await spool.start()
    await spool.stop()
    conn = sqlite3.connect(path)
    try:
        plan = " / ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", params))
    finally:
        conn.close()
    assert f"USING INDEX {index}" in plan or f"USING {index}" in plan, plan


async def test_a_version_1_spool_is_upgraded_with_its_mail(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA)
    old.execute(
        "INSERT INTO messages VALUES ('Q1', 1.0, 'a@b.c', '127.0.0.1', 'h', NULL, 3, x'616263')"
    )
    old.execute(
        "INSERT INTO deliveries (message_id, recipient, request, state,"
        " next_attempt_at, updated_at) VALUES ('Q1', 'r@sms.local', '{}', 'queued',"
        " 1.0, 1.0)"
    )
    old.execute("PRAGMA user_version=1")
    old.commit()
    old.close()

    spool = SqliteSpool(path)
    await spool.start()
    try:
        detail = await spool.show_message("Q1")
        assert detail is not None and detail.deliveries[0].state == "queued"
        assert detail.deliveries[0].status is None and detail.deliveries[0].bounce is None
        [leased] = await spool.lease(10, 60)
        assert leased.queue_id == "Q1"
    finally:
        await spool.stop()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_a_spool_newer_than_the_program_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    newer = sqlite3.connect(path)
    newer.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    newer.close()
    spool = SqliteSpool(path)
    with pytest.raises(SpoolError, match="newer than this program"):
        await spool.start()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
