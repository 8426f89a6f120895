"""Finding deliveries for the operator, and the queue at a glance: jobs for read connections.

Run by Spool.find_deliveries and Spool.overview on a connection of their own, so they go on
beside a live daemon without holding up its writer. A delivery is shown in the state a person
asks about (states.SHOWN): `sent` until the platform's status says `delivered`, `failed` or
something `unknown`.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Protocol

from gateway.spool import sql
from gateway.spool.deliveries import Clock
from gateway.spool.rows import DeliveryLine, Overview, Search
from gateway.spool.schema import select


class Row(Protocol):
    """A row read by name: sqlite3.Row, or asyncpg's Record for the PostgreSQL spool."""

    def __getitem__(self, key: str) -> Any: ...


SENT_WINDOW = 3600.0      # the overview's "sent in the last hour"


def line(row: Row) -> DeliveryLine:
    return DeliveryLine(row["message_id"], row["id"], row["received_at"], row["recipient"],
                        row["sent_to"] if isinstance(row["sent_to"], str) else None,
                        row["shown"], row["attempts"], row["last_error"], row["status"],
                        row["updated_at"])


def parameters(search: Search) -> dict[str, object]:
    """`89001234567@sms.local` as written, `79001234567` or `+79001234567` as sent, or a bare
    local part `89001234567` of any domain."""
    to = None if search.to is None else search.to.strip().lower()
    local = None
    if to is not None and "@" not in to:
        local = to.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "@%"
    since = search.since
    return {"since": since, "from_id": "" if since is None else f"{int(since * 1000):011X}",
            "state": search.state, "queue_id": search.queue_id, "to": to,
            "to_number": None if to is None else to.removeprefix("+"), "to_local": local,
            "limit": search.limit}


def find_deliveries(conn: sqlite3.Connection, search: Search) -> list[DeliveryLine]:
    """The deliveries that match, newest first, at most `search.limit`."""
    statement = sql.FIND_UNFINISHED if search.pending_only else sql.FIND_DELIVERIES
    return [line(row) for row in select(conn, statement, parameters(search))]


def overview(conn: sqlite3.Connection, clock: Clock, errors: int) -> Overview:
    """Counts by shown state, the oldest delivery still waiting, sends in the last hour and the
    platform errors (refusals, failed attempts, failed statuses) of the newest messages.

    The counts scan the spool, as /metrics does; finished messages leave it after a week."""
    counts = {row["shown"]: row["n"] for row in select(conn, sql.COUNT_BY_SHOWN_STATE)}
    oldest = select(conn, sql.OLDEST_WAITING)
    sent = select(conn, sql.SENT_SINCE, (clock() - SENT_WINDOW,))[0]["n"]
    failed = select(conn, sql.RECENT_ERRORS, (errors,))
    return Overview(counts, line(oldest[0]) if oldest else None, sent,
                    [line(row) for row in failed])
