"""The jobs of the accept and delivery paths, each run on the writer thread in a group commit.

Deliveries are leased the way litequeue does it: leasing moves a row to `sending` and sets
`next_attempt_at` to the lease's end, so a lease a crash left behind simply becomes due again.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Sequence

from gateway.spool import sql
from gateway.spool.packing import load_texts, pack_requests, unpack_request
from gateway.spool.rows import Delivery, IncomingMessage, Result
from gateway.spool.schema import select, select_one
from gateway.spool.states import State

Clock = Callable[[], float]


@dataclasses.dataclass(frozen=True, slots=True)
class NewMessage:
    """A message as the writer thread stores it, with its queue id and arrival time."""
    queue_id: str
    now: float
    message: IncomingMessage


def insert(conn: sqlite3.Connection, new: list[NewMessage]) -> list[str]:
    """Store messages and their deliveries, a few statements for all of them; their queue ids.

    The requests are packed (packing.py) here, on the writer thread, not by the session that
    waits for the 250: between its statements this thread holds the GIL anyway, and the same
    work on the event loop measured slower for the whole gateway (bench/stages.py loop-pack)."""
    messages: list[tuple[object, ...]] = []
    deliveries: list[tuple[object, ...]] = []
    events: dict[tuple[object, ...], None] = {}
    for n in new:
        texts, requests = pack_requests([delivery.request for delivery in n.message.deliveries])
        messages.append((n.queue_id, n.now, n.message.mail_from, n.message.peer,
                         n.message.helo, n.message.auth_user, len(n.message.raw), n.message.raw,
                         texts))
        for delivery, request in zip(n.message.deliveries, requests, strict=True):
            deliveries.append((n.queue_id, delivery.recipient, request, *delivery.initial_state(),
                               n.now, n.now))
            if delivery.event is not None:
                events.setdefault((n.now, *delivery.event, n.queue_id, delivery.recipient))
    _insert_rows(conn, sql.insert_messages, messages)
    _insert_rows(conn, sql.insert_deliveries, deliveries)
    if events:
        conn.executemany(sql.INSERT_EVENT_BY_RECIPIENT, list(events))
    return [n.queue_id for n in new]


def _insert_rows(conn: sqlite3.Connection, statement: Callable[[int], str],
                 rows: Sequence[tuple[object, ...]]) -> None:
    for start in range(0, len(rows), sql.INSERT_ROWS):
        chunk = rows[start:start + sql.INSERT_ROWS]
        conn.execute(statement(len(chunk)), [value for row in chunk for value in row])


def recover(conn: sqlite3.Connection, clock: Clock) -> int:
    # Only one daemon uses a spool (the caller holds its lock), so any `sending` row was left by
    # a process that died mid-attempt: due again now, at least once.
    now = clock()
    return conn.execute(sql.RECOVER_LEASES, (now, now)).rowcount


def lease(conn: sqlite3.Connection, clock: Clock, limit: int,
          lease_seconds: float) -> list[Delivery]:
    now = clock()
    rows = select(conn, sql.LEASE, (now + lease_seconds, now, now, limit))
    if not rows:
        return []
    ids = sorted({row["message_id"] for row in rows})
    meta = {m["id"]: m for m in select(conn, sql.MESSAGES_META, (json.dumps(ids),))}
    texts = {queue_id: load_texts(m["texts"]) for queue_id, m in meta.items()}
    return [Delivery(id=row["id"], message_id=row["message_id"], recipient=row["recipient"],
                     request=unpack_request(row["request"], texts[row["message_id"]]),
                     attempts=row["attempts"], received_at=meta[row["message_id"]]["received_at"],
                     auth_user=meta[row["message_id"]]["auth_user"])
            for row in sorted(rows, key=lambda row: row["id"])]


def next_due(conn: sqlite3.Connection) -> float | None:
    row = select_one(conn, sql.NEXT_DUE)
    return None if row is None or row["due"] is None else float(row["due"])


def release(conn: sqlite3.Connection, clock: Clock, delivery_ids: Sequence[int]) -> int:
    now = clock()
    return conn.execute(sql.RELEASE, (now, now, json.dumps(list(delivery_ids)), now)).rowcount


def record(conn: sqlite3.Connection, clock: Clock, results: Sequence[Result]) -> None:
    now = clock()
    rows = [(r.state, r.next_attempt_at, r.platform_id,
             None if r.state == State.SENT else r.detail, now, r.delivery_id) for r in results]
    # A statement a result, to know which took: one dropped by an operator while it was being
    # sent is gone, and one the platform's callback settled meanwhile stays sent.
    recorded = [result for result, row in zip(results, rows, strict=True)
                if conn.execute(sql.RECORD_RESULT, row).rowcount]
    for result in recorded:
        if result.bounce:
            mark_bounce(conn, result.delivery_id)
    add_events(conn, [(r.delivery_id, now, r.event, r.detail) for r in recorded])


def purge(conn: sqlite3.Connection, older_than: float) -> int:
    return conn.execute(sql.PURGE, (older_than, older_than)).rowcount


def mark_bounce(conn: sqlite3.Connection, delivery_id: int) -> bool:
    """Queue one notification for a failed delivery; never for a null sender, never twice."""
    return conn.execute(sql.MARK_BOUNCE, (delivery_id,)).rowcount > 0


def add_events(conn: sqlite3.Connection, events: list[tuple[int, float, str, str]]) -> None:
    """A delivery's history: (delivery id, when, kind, detail), the one way events are written."""
    conn.executemany(sql.INSERT_EVENT, events)
