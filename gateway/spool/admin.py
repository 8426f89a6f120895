"""What `smtp2pulse queue` shows and changes, as queries on the spool.

These run beside a live daemon: SQLite's WAL lets them read while it writes (the queries that
only read run on a read connection, never in the writer's transaction, so a long listing does
not hold up an accept), and a retry is picked up by the daemon's worker on its next look.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from gateway.spool.store import Spool, load_texts, unpack_request


@dataclass(frozen=True, slots=True)
class MessageSummary:
    id: str
    received_at: float
    mail_from: str
    states: dict[str, int]
    recipients: list[str]


@dataclass(frozen=True, slots=True)
class DeliveryDetail:
    id: int
    recipient: str
    state: str
    attempts: int
    next_attempt_at: float
    platform_id: str | None
    last_error: str | None
    request: dict[str, str]
    status: str | None = None          # the platform's last delivery status, verbatim
    status_class: str | None = None    # delivered | failed | pending | unknown
    status_at: float | None = None
    bounce: str | None = None          # pending | sent | failed: the DSN to the sender
    events: list[tuple[float, str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MessageDetail:
    id: str
    received_at: float
    mail_from: str
    peer: str
    helo: str
    size: int
    deliveries: list[DeliveryDetail]


async def list_messages(spool: Spool, *, include_finished: bool = False,
                        limit: int = 1000) -> list[MessageSummary]:
    def query(conn: sqlite3.Connection) -> list[MessageSummary]:
        where = "" if include_finished else (
            "WHERE EXISTS (SELECT 1 FROM deliveries a WHERE a.message_id = m.id"
            " AND a.state IN ('queued', 'sending'))")
        # The oldest messages first, along the index on received_at, and only then their
        # deliveries: joining first would sort every delivery in the spool to show `limit`.
        rows = conn.execute(
            f"SELECT m.id, m.received_at, m.mail_from, d.state, d.recipient"  # noqa: S608
            f" FROM (SELECT id, received_at, mail_from FROM messages m {where}"
            f" ORDER BY received_at LIMIT ?) m JOIN deliveries d ON d.message_id = m.id"
            f" ORDER BY m.received_at, d.id LIMIT ?", (limit, limit)).fetchall()
        summaries: dict[str, MessageSummary] = {}
        for message_id, received_at, mail_from, state, recipient in rows:
            summary = summaries.setdefault(
                message_id, MessageSummary(message_id, received_at, mail_from, {}, []))
            summary.states[state] = summary.states.get(state, 0) + 1
            summary.recipients.append(recipient)
        return list(summaries.values())
    return await spool.read(query)


async def show_message(spool: Spool, queue_id: str) -> MessageDetail | None:
    def query(conn: sqlite3.Connection) -> MessageDetail | None:
        row = conn.execute("SELECT id, received_at, mail_from, peer, helo, size, texts"
                           " FROM messages WHERE id = ?", (queue_id,)).fetchone()
        if row is None:
            return None
        texts = load_texts(row[6])
        deliveries = []
        for d in conn.execute(
                "SELECT id, recipient, state, attempts, next_attempt_at, platform_id,"
                " last_error, request, status, status_class, status_at, bounce"
                " FROM deliveries WHERE message_id = ? ORDER BY id",
                (queue_id,)).fetchall():
            # Arrival is the message's own time, not an event row: one insert less per message.
            # (Spools written before that have the row; it is not shown twice.)
            events = [(row[1], "received", ""), *(tuple(e) for e in conn.execute(
                "SELECT at, kind, detail FROM events WHERE delivery_id = ? AND kind != 'received'"
                " ORDER BY at, rowid", (d[0],)).fetchall())]
            deliveries.append(DeliveryDetail(
                id=d[0], recipient=d[1], state=d[2], attempts=d[3], next_attempt_at=d[4],
                platform_id=d[5], last_error=d[6], request=unpack_request(d[7], texts), status=d[8],
                status_class=d[9], status_at=d[10], bounce=d[11], events=events))
        return MessageDetail(id=row[0], received_at=row[1], mail_from=row[2], peer=row[3],
                             helo=row[4], size=row[5], deliveries=deliveries)
    return await spool.read(query)


async def retry_message(spool: Spool, queue_id: str) -> int | None:
    """Make every unfinished or failed delivery of a message due now; None if no such message."""
    def update(conn: sqlite3.Connection) -> int | None:
        if conn.execute("SELECT 1 FROM messages WHERE id = ?", (queue_id,)).fetchone() is None:
            return None
        now = spool.clock()
        ids = [r[0] for r in conn.execute(
            "UPDATE deliveries SET state = 'queued', next_attempt_at = ?, updated_at = ?"
            " WHERE message_id = ? AND state IN ('queued', 'failed', 'refused') RETURNING id",
            (now, now, queue_id)).fetchall()]
        conn.executemany("INSERT INTO events (delivery_id, at, kind, detail) VALUES (?, ?, ?, ?)",
                         [(i, now, "retry", "requested by operator") for i in ids])
        return len(ids)
    return await spool.run(update)


async def drop_message(spool: Spool, queue_id: str) -> bool:
    def delete(conn: sqlite3.Connection) -> bool:
        return conn.execute("DELETE FROM messages WHERE id = ?", (queue_id,)).rowcount > 0
    return await spool.run(delete)


def as_jsonable(detail: MessageDetail) -> dict[str, Any]:
    from dataclasses import asdict
    return asdict(detail)
