"""What happens to a delivery after the platform took or refused it: the statuses its callbacks
report, and the notification (DSN) owed to the sender of one that failed. Writer-thread jobs."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from gateway.spool import sql
from gateway.spool.deliveries import Clock, add_events
from gateway.spool.rows import PendingBounce
from gateway.spool.schema import select, select_one
from gateway.spool.states import TAKEN_BY_CALLBACK, BounceState, CallbackResult, State, StatusClass

STATUS_EVENT = "status"
CONFIRMED = "confirmed by the platform's callback"   # the detail of an unconfirmed one's "sent"


def record_status(conn: sqlite3.Connection, clock: Clock, delivery_id: int, queue_id: str,
                  platform_id: str, status: str, classify: Callable[[bool], StatusClass],
                  max_statuses: int) -> tuple[CallbackResult, StatusClass]:
    row = select_one(conn, sql.DELIVERY_FOR_STATUS, (delivery_id, queue_id))
    if row is None:
        return "unknown", StatusClass.UNKNOWN
    # kannel_status is a delivery's own short field, never one of the message's shared texts.
    meaning = classify(json.loads(row["request"]).get("kannel_status") == "1")
    detail = f"{status} ({meaning})" + (f" platform_id={platform_id}" if platform_id else "")
    if select_one(conn, sql.STATUS_SEEN, (delivery_id, STATUS_EVENT, detail)) is not None:
        return "repeated", meaning
    count = select_one(conn, sql.STATUS_COUNT, (delivery_id, STATUS_EVENT))
    if count is not None and count["n"] >= max_statuses:
        return "ignored", meaning    # one signed URL must not fill the spool
    now = clock()
    conn.execute(sql.RECORD_STATUS, (status, meaning, now, platform_id, delivery_id))
    events = [(delivery_id, now, STATUS_EVENT, detail)]
    if row["state"] in TAKEN_BY_CALLBACK:
        events.insert(0, (delivery_id, now, "sent", CONFIRMED))
    add_events(conn, events)
    return "recorded", meaning


def pending_bounces(conn: sqlite3.Connection, limit: int) -> list[PendingBounce]:
    return [PendingBounce(delivery_id=row["delivery_id"], queue_id=row["queue_id"],
                          mail_from=row["mail_from"], recipient=row["recipient"],
                          received_at=row["received_at"], state=State(row["state"]),
                          reason=row["reason"], raw=row["raw"])
            for row in select(conn, sql.PENDING_BOUNCES, (limit,))]


def settle_bounce(conn: sqlite3.Connection, clock: Clock, delivery_id: int, state: BounceState,
                  detail: str) -> None:
    conn.execute(sql.SETTLE_BOUNCE, (state, delivery_id))
    add_events(conn, [(delivery_id, clock(), f"bounce {state}", detail)])
