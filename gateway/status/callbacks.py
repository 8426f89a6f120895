"""What happened after the platform took a message: signed callbacks, statuses, spool health.

The platform calls the `callback` URL of each request with `{id}` and `{status}` filled in, and
retries after 1 and 10 minutes until it gets a 200. The URL carries the delivery it is about and
an HMAC of it, so a callback can only speak for the delivery its URL was made for.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode

from gateway.spool.store import Spool

# Kannel DLR values are bit flags; the worst bit present decides.
_KANNEL = ((2, "failed"), (16, "failed"), (1, "delivered"), (8, "pending"), (4, "pending"))
# Platform words we can read with confidence; anything else is kept verbatim as "unknown".
_WORDS = {
    "delivered": "delivered", "read": "delivered", "seen": "delivered",
    "undelivered": "failed", "failed": "failed", "rejected": "failed", "expired": "failed",
    "error": "failed", "not_delivered": "failed",
    "sent": "pending", "queued": "pending", "pending": "pending", "accepted": "pending",
    "enroute": "pending", "buffered": "pending",
}
StatusClass = Literal["delivered", "failed", "pending", "unknown"]
CallbackResult = Literal["recorded", "repeated", "unknown", "ignored"]
MAX_STATUSES = 20   # distinct statuses kept per delivery; a real one goes through a handful


def sign(secret: str, delivery_id: int, queue_id: str) -> str:
    message = f"{delivery_id}:{queue_id}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def verify(secret: str, delivery_id: int, queue_id: str, signature: str) -> bool:
    return bool(secret) and hmac.compare_digest(sign(secret, delivery_id, queue_id),
                                                signature.encode("ascii", "replace").decode())


def callback_url(base: str, secret: str, delivery_id: int, queue_id: str) -> str:
    """The request's `callback`: ours, signed, with the platform's placeholders left in."""
    query = urlencode({"d": delivery_id, "q": queue_id,
                       "sig": sign(secret, delivery_id, queue_id)})
    return f"{base}?{query}&id={{id}}&status={{status}}"


def classify_status(status: str, kannel: bool) -> StatusClass:
    text = status.strip()
    if kannel and text.isdigit():
        flags = int(text)
        for bit, meaning in _KANNEL:
            if flags & bit:
                return meaning  # type: ignore[return-value]
        return "unknown"
    return _WORDS.get(text.lower(), "unknown")  # type: ignore[return-value]


async def record_status(spool: Spool, delivery_id: int, queue_id: str, platform_id: str,
                        status: str) -> tuple[CallbackResult, StatusClass]:
    """Store a callback's status on its delivery, once however often the platform repeats it."""
    def write(conn: sqlite3.Connection) -> tuple[CallbackResult, StatusClass]:
        row = conn.execute("SELECT request, status FROM deliveries WHERE id = ? AND"
                           " message_id = ?", (delivery_id, queue_id)).fetchone()
        if row is None:
            return "unknown", "unknown"
        kannel = json.loads(row[0]).get("kannel_status") == "1"
        meaning = classify_status(status, kannel)
        detail = f"{status} ({meaning})" + (f" platform_id={platform_id}" if platform_id else "")
        seen = conn.execute("SELECT 1 FROM events WHERE delivery_id = ? AND kind = 'status'"
                            " AND detail = ?", (delivery_id, detail)).fetchone()
        if seen:
            return "repeated", meaning
        if conn.execute("SELECT count(*) FROM events WHERE delivery_id = ? AND kind = 'status'",
                        (delivery_id,)).fetchone()[0] >= MAX_STATUSES:
            return "ignored", meaning    # one signed URL must not fill the spool
        now = time.time()
        conn.execute("UPDATE deliveries SET status = ?, status_class = ?, status_at = ?,"
                     " platform_id = coalesce(platform_id, nullif(?, '')) WHERE id = ?",
                     (status, meaning, now, platform_id, delivery_id))
        conn.execute("INSERT INTO events (delivery_id, at, kind, detail) VALUES (?, ?, ?, ?)",
                     (delivery_id, now, "status", detail))
        return "recorded", meaning
    return await spool.run(write)


@dataclass(frozen=True, slots=True)
class SpoolStats:
    by_state: dict[str, int]
    oldest_pending_age: float


async def spool_stats(spool: Spool) -> SpoolStats:
    def query(conn: sqlite3.Connection) -> SpoolStats:
        counts = dict(conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state"))
        # Queue ids begin with their received_at, zero-padded, so the least id of an unfinished
        # delivery is the oldest one: one step down the index of unfinished deliveries (named,
        # so that the plan does not rest on the planner's guess), not a join over the backlog.
        oldest = conn.execute(
            "SELECT received_at FROM messages WHERE id = (SELECT min(message_id) FROM deliveries"
            " INDEXED BY deliveries_pending WHERE state IN ('queued', 'sending'))").fetchone()
        return SpoolStats(counts, 0.0 if oldest is None else max(0.0, spool.clock() - oldest[0]))
    return await spool.read(query)


async def probe_writable(spool: Spool) -> None:
    """A real write and commit: raises if the spool cannot store right now."""
    def write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('health', ?) ON CONFLICT(key)"
                     " DO UPDATE SET value = excluded.value", (str(time.time()),))
    await spool.run(write)
