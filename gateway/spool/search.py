"""Finding deliveries for the operator: by recipient, time and state, and the queue at a glance.

Read-only queries on a connection of their own (Spool.read), so they run beside a live daemon
without holding up its writer. A delivery is shown in the state a person asks about: `sent`
until the platform's callback says `delivered`, `failed` or something `unknown`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from gateway.spool.store import Spool

# What `queue list --state` and the page know; the last three come from the platform's status.
SHOWN_STATES = ("queued", "sending", "sent", "delivered", "failed", "refused", "unknown")
PENDING_STATES = ("queued", "sending")
_SHOWN = ("CASE WHEN d.state = 'sent' AND d.status_class IN ('delivered', 'failed', 'unknown')"
          " THEN d.status_class ELSE d.state END")
# The platform's sent_to, short enough to be in the delivery's own JSON (a long one is an index
# into the message's texts, and is then left out: the recipient as written still matches).
_SENT_TO = "json_extract(d.request, '$.sent_to')"
# Statements built from the constants above only, never from a value (S608 is told so below).
_LINE = (f"SELECT d.message_id, d.id, m.received_at, d.recipient, {_SENT_TO} AS sent_to,"  # noqa: S608
         f" {_SHOWN} AS shown, d.attempts, d.last_error, d.status, d.updated_at"
         " FROM deliveries d JOIN messages m ON m.id = d.message_id")
# Newest first along the index of deliveries by message (queue ids begin with their arrival
# time): the scan stops at :limit matches, where ordering by time would sort every one, and
# :from_id (the id prefix of --since) makes it a range. Each filter is off when NULL.
_FILTERS = (" AND (:since IS NULL OR m.received_at >= :since) AND"
            f" (:state IS NULL OR {_SHOWN} = :state)"
            " AND (:queue_id IS NULL OR d.message_id = :queue_id)"
            f" AND (:to IS NULL OR lower(d.recipient) = :to OR {_SENT_TO} IN (:to, :to_number)"
            " OR lower(d.recipient) LIKE :to_local ESCAPE '\\')"
            " ORDER BY d.message_id DESC, d.id DESC LIMIT :limit")
FIND_DELIVERIES = _LINE + " WHERE d.message_id >= :from_id" + _FILTERS
FIND_UNFINISHED = _LINE + (
    " WHERE d.state IN ('queued', 'sending') AND d.message_id >= :from_id" + _FILTERS)
COUNT_BY_SHOWN_STATE = f"SELECT {_SHOWN} AS shown, count(*) AS n FROM deliveries d GROUP BY 1"  # noqa: S608
# Queue ids begin with their arrival time, so the least unfinished one is the oldest.
OLDEST_WAITING = (_LINE + " WHERE d.id = (SELECT id FROM deliveries"  # noqa: S608
                  " INDEXED BY deliveries_pending WHERE state IN ('queued', 'sending')"
                  " ORDER BY message_id, id LIMIT 1)")
SENT_SINCE = "SELECT count(*) AS n FROM events WHERE kind = 'sent' AND at >= ?"
RECENT_ERRORS = (_LINE + " WHERE d.last_error IS NOT NULL OR d.status_class = 'failed'"
                 " ORDER BY d.message_id DESC, d.id DESC LIMIT ?")


@dataclass(frozen=True, slots=True)
class DeliveryLine:
    queue_id: str
    delivery_id: int
    received_at: float
    recipient: str          # as written in RCPT TO
    sent_to: str | None     # as sent to the platform
    state: str              # one of SHOWN_STATES
    attempts: int
    last_error: str | None
    status: str | None      # the platform's last status, verbatim
    updated_at: float


@dataclass(frozen=True, slots=True)
class Search:
    to: str | None = None         # a recipient as written or as sent
    since: float | None = None    # received at or after (epoch seconds)
    state: str | None = None      # one of SHOWN_STATES
    queue_id: str | None = None
    pending_only: bool = False
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class Overview:
    by_state: dict[str, int]
    oldest_waiting: DeliveryLine | None
    sent_last_hour: int
    recent_errors: list[DeliveryLine]


def _line(row: sqlite3.Row) -> DeliveryLine:
    return DeliveryLine(row["message_id"], row["id"], row["received_at"], row["recipient"],
                        row["sent_to"] if isinstance(row["sent_to"], str) else None,
                        row["shown"], row["attempts"], row["last_error"], row["status"],
                        row["updated_at"])


def _rows(conn: sqlite3.Connection, statement: str, params: Any = ()) -> list[sqlite3.Row]:
    cursor = conn.cursor()
    cursor.row_factory = sqlite3.Row
    return cursor.execute(statement, params).fetchall()


def _parameters(search: Search) -> dict[str, object]:
    """`89001234567@sms.local` as written, `79001234567` or `+79001234567` as sent, or a bare
    local part `89001234567` of any domain."""
    to = None if search.to is None else search.to.strip().lower()
    local = None
    if to is not None and "@" not in to:
        local = to.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "@%"
    since = search.since
    return {"since": since,
            "from_id": "" if since is None else f"{int(since * 1000):011X}",
            "state": search.state, "queue_id": search.queue_id, "to": to,
            "to_number": None if to is None else to.removeprefix("+"), "to_local": local,
            "limit": search.limit}


def find(conn: sqlite3.Connection, search: Search) -> list[DeliveryLine]:
    statement = FIND_UNFINISHED if search.pending_only else FIND_DELIVERIES
    return [_line(row) for row in _rows(conn, statement, _parameters(search))]


def summarise(conn: sqlite3.Connection, now: float, errors: int = 5) -> Overview:
    counts = {row["shown"]: row["n"] for row in _rows(conn, COUNT_BY_SHOWN_STATE)}
    oldest = _rows(conn, OLDEST_WAITING)
    sent = _rows(conn, SENT_SINCE, (now - 3600,))[0]["n"]
    failed = _rows(conn, RECENT_ERRORS, (errors,))
    return Overview(counts, _line(oldest[0]) if oldest else None, sent,
                    [_line(row) for row in failed])


async def find_deliveries(spool: Spool, search: Search) -> list[DeliveryLine]:
    """The deliveries that match, newest first, at most `search.limit`."""
    return await spool.read(lambda conn: find(conn, search))


async def overview(spool: Spool, *, errors: int = 5) -> Overview:
    """Counts by shown state, the oldest delivery still waiting, sends in the last hour and the
    platform errors (refusals, failed attempts, failed statuses) of the newest messages.

    The counts scan the spool, as /metrics does; finished messages leave it after a week."""
    now = spool.clock()
    return await spool.read(lambda conn: summarise(conn, now, errors))
