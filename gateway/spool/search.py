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
_COLUMNS = (f"d.message_id, d.id, m.received_at, d.recipient, {_SENT_TO}, {_SHOWN},"
            " d.attempts, d.last_error, d.status, d.updated_at")


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


def _line(row: Any) -> DeliveryLine:
    sent_to = row[4] if isinstance(row[4], str) else None
    return DeliveryLine(row[0], row[1], row[2], row[3], sent_to, row[5], row[6], row[7], row[8],
                        row[9])


def _recipient_terms(to: str) -> tuple[str, list[str]]:
    """`89001234567@sms.local` as written, `79001234567` or `+79001234567` as sent, or a bare
    local part `89001234567` of any domain."""
    wanted = to.strip().lower()
    terms = ["lower(d.recipient) = ?", f"{_SENT_TO} = ?", f"{_SENT_TO} = ?"]
    params = [wanted, wanted, wanted.removeprefix("+")]
    if "@" not in wanted:
        escaped = wanted.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        terms.append("lower(d.recipient) LIKE ? ESCAPE '\\'")
        params.append(escaped + "@%")
    return "(" + " OR ".join(terms) + ")", params


async def find_deliveries(spool: Spool, search: Search) -> list[DeliveryLine]:
    """The deliveries that match, newest first, at most `search.limit`."""
    where: list[str] = []
    params: list[object] = []
    if search.pending_only:
        where.append("d.state IN ('queued', 'sending')")
    if search.since is not None:
        # Queue ids begin with their arrival time (store.new_queue_id): a range of the index.
        where.append("d.message_id >= ? AND m.received_at >= ?")
        params += [f"{int(search.since * 1000):011X}", search.since]
    if search.state is not None:
        where.append(f"{_SHOWN} = ?")
        params.append(search.state)
    if search.queue_id is not None:
        where.append("d.message_id = ?")
        params.append(search.queue_id)
    if search.to is not None:
        term, more = _recipient_terms(search.to)
        where.append(term)
        params.extend(more)
    sql = (f"SELECT {_COLUMNS} FROM messages m JOIN deliveries d ON d.message_id = m.id"  # noqa: S608
           + (" WHERE " + " AND ".join(where) if where else "")
           # Newest first along the index of deliveries by message (queue ids sort by arrival):
           # the scan stops at `limit` matches, where ordering by time would sort every one.
           + " ORDER BY d.message_id DESC, d.id DESC LIMIT ?")
    params.append(search.limit)

    def query(conn: sqlite3.Connection) -> list[DeliveryLine]:
        return [_line(row) for row in conn.execute(sql, params).fetchall()]
    return await spool.read(query)


async def overview(spool: Spool, *, errors: int = 5) -> Overview:
    """Counts by shown state, the oldest delivery still waiting, sends in the last hour and the
    platform errors (refusals, failed attempts, failed statuses) of the newest messages.

    The counts scan the spool, as /metrics does; finished messages leave it after a week."""
    hour_ago = spool.clock() - 3600

    def query(conn: sqlite3.Connection) -> Overview:
        counts = dict(conn.execute(
            f"SELECT {_SHOWN}, count(*) FROM deliveries d GROUP BY 1"))  # noqa: S608
        # Queue ids begin with their arrival time, so the least pending one is the oldest.
        oldest = conn.execute(
            f"SELECT {_COLUMNS} FROM deliveries d JOIN messages m ON m.id = d.message_id"  # noqa: S608
            " WHERE d.id = (SELECT id FROM deliveries INDEXED BY deliveries_pending"
            " WHERE state IN ('queued', 'sending') ORDER BY message_id, id LIMIT 1)").fetchone()
        sent = conn.execute("SELECT count(*) FROM events WHERE kind = 'sent' AND at >= ?",
                            (hour_ago,)).fetchone()[0]
        failed = conn.execute(
            f"SELECT {_COLUMNS} FROM deliveries d JOIN messages m ON m.id = d.message_id"  # noqa: S608
            " WHERE d.last_error IS NOT NULL OR d.status_class = 'failed'"
            " ORDER BY d.message_id DESC, d.id DESC LIMIT ?", (errors,)).fetchall()
        return Overview({str(k): int(v) for k, v in counts.items()},
                        None if oldest is None else _line(oldest), int(sent),
                        [_line(row) for row in failed])
    return await spool.read(query)
