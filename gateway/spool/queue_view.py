"""The spool as the operator and the monitoring see it: `smtp2pulse queue`, metrics, health.

The reads run on read connections beside the writer (see writer.Readers); a retry or drop is
a writer job like any other, and a live daemon's worker picks a retried delivery up on its
next look.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import TypeVar

from gateway.spool import sql
from gateway.spool.deliveries import Clock, add_events
from gateway.spool.packing import load_texts, unpack_request
from gateway.spool.rows import DeliveryDetail, MessageDetail, MessageSummary, SpoolStats
from gateway.spool.schema import select, select_one
from gateway.spool.search import Row
from gateway.spool.states import BounceState, State, StatusClass

E = TypeVar("E", StatusClass, BounceState)


def list_messages(conn: sqlite3.Connection, include_finished: bool,
                  limit: int) -> list[MessageSummary]:
    statement = sql.LIST_ALL if include_finished else sql.LIST_UNFINISHED
    return summaries(select(conn, statement, (limit, limit)))


def show_message(conn: sqlite3.Connection, queue_id: str) -> MessageDetail | None:
    message = select_one(conn, sql.SHOW_MESSAGE, (queue_id,))
    if message is None:
        return None
    return detail(message, [(d, select(conn, sql.SHOW_EVENTS, (d["id"],)))
                            for d in select(conn, sql.SHOW_DELIVERIES, (queue_id,))])


def summaries(rows: Iterable[Row]) -> list[MessageSummary]:
    """The rows of LIST_ALL or LIST_UNFINISHED (one a delivery), a summary a message: shared
    with the PostgreSQL spool, whose rows are read by the same names."""
    by_id: dict[str, MessageSummary] = {}
    for row in rows:
        summary = by_id.setdefault(row["id"], MessageSummary(
            row["id"], row["received_at"], row["mail_from"], {}, []))
        summary.states[row["state"]] = summary.states.get(row["state"], 0) + 1
        summary.recipients.append(row["recipient"])
    return list(by_id.values())


def detail(message: Row, deliveries: Iterable[tuple[Row, Iterable[Row]]]) -> MessageDetail:
    """A message from its SHOW_MESSAGE row and, for each SHOW_DELIVERIES row, its SHOW_EVENTS
    rows: shared with the PostgreSQL spool, whose rows are read by the same names."""
    texts = load_texts(message["texts"])
    details = []
    for d, event_rows in deliveries:
        events = [(message["received_at"], "received", ""),
                  *((e["at"], e["kind"], e["detail"]) for e in event_rows)]
        details.append(DeliveryDetail(
            id=d["id"], recipient=d["recipient"], state=State(d["state"]),
            attempts=d["attempts"], next_attempt_at=d["next_attempt_at"],
            platform_id=d["platform_id"], last_error=d["last_error"],
            request=unpack_request(d["request"], texts), status=d["status"],
            status_class=_maybe(StatusClass, d["status_class"]), status_at=d["status_at"],
            bounce=_maybe(BounceState, d["bounce"]), events=events))
    return MessageDetail(id=message["id"], received_at=message["received_at"],
                         mail_from=message["mail_from"], peer=message["peer"],
                         helo=message["helo"], size=message["size"], deliveries=details)


def _maybe(kind: type[E], value: str | None) -> E | None:
    return None if value is None else kind(value)


def retry_message(conn: sqlite3.Connection, clock: Clock, queue_id: str) -> int | None:
    """Make every unfinished or failed delivery of a message due now; None if no such message."""
    if select_one(conn, sql.MESSAGE_EXISTS, (queue_id,)) is None:
        return None
    now = clock()
    ids = [row["id"] for row in select(conn, sql.RETRY_MESSAGE, (now, now, queue_id))]
    add_events(conn, [(i, now, "retry", "requested by operator") for i in ids])
    return len(ids)


def drop_message(conn: sqlite3.Connection, queue_id: str) -> bool:
    return conn.execute(sql.DROP_MESSAGE, (queue_id,)).rowcount > 0


def stats(conn: sqlite3.Connection, clock: Clock) -> SpoolStats:
    counts = {row["state"]: row["n"] for row in select(conn, sql.COUNT_BY_STATE)}
    oldest = select_one(conn, sql.OLDEST_PENDING)
    age = 0.0 if oldest is None else max(0.0, clock() - oldest["received_at"])
    return SpoolStats(counts, age)


def unconfirmed(conn: sqlite3.Connection) -> int:
    row = select_one(conn, sql.COUNT_UNCONFIRMED)
    return 0 if row is None else int(row["n"])


def probe_writable(conn: sqlite3.Connection, clock: Clock) -> None:
    conn.execute(sql.PROBE_WRITE, (str(clock()),))
