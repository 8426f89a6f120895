"""The spool in PostgreSQL (`spool.url`), shared by every gateway pointed at it.

What differs from the SQLite spool, and why:

- Leases are claimed with `FOR UPDATE SKIP LOCKED`: gateways leasing at the same moment get
  different rows and never wait on each other. A lease is a `sending` row whose
  `next_attempt_at` is its expiry, as in SQLite; a gateway that dies leaves its leases to
  expire, and whoever leases next takes them over. Nobody takes a lease that has not expired,
  and a lease outlives its request's whole deadline (`api.timeout`), so a live one is never
  stolen.
- Start takes back no lease: in SQLite one process owns the spool, so a `sending` row at start
  was left by a crash; here it may be another gateway's live send.
- Each commit that makes something due sends one NOTIFY: every gateway LISTENs and its worker
  wakes at once, instead of waiting for its next look at the clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import asyncpg

from gateway.spool.pg.link import Link
from gateway.spool.pg.schema import prepare
from gateway.spool.store import (
    Delivery,
    IncomingMessage,
    Result,
    load_texts,
    new_queue_id,
    pack_requests,
    unpack_request,
)

ACCEPT = """
WITH message AS (
    INSERT INTO messages (id, received_at, mail_from, peer, helo, auth_user, size, raw, texts)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
)
INSERT INTO deliveries (message_id, recipient, request, state, next_attempt_at, updated_at)
SELECT $1, recipient, request, 'queued', $2, $2 FROM unnest($10::text[], $11::text[])
    AS t(recipient, request)
"""
LEASE = """
WITH taken AS (
    UPDATE deliveries SET state = 'sending', next_attempt_at = $1, updated_at = $2
    WHERE id IN (SELECT id FROM deliveries WHERE state IN ('queued', 'sending')
                 AND next_attempt_at <= $2 ORDER BY next_attempt_at LIMIT $3
                 FOR UPDATE SKIP LOCKED)
    RETURNING id, message_id, recipient, request, attempts
)
SELECT taken.*, m.received_at, m.auth_user, m.texts
FROM taken JOIN messages m ON m.id = taken.message_id ORDER BY taken.id
"""
NEXT_DUE = ("SELECT min(next_attempt_at) FROM deliveries"
            " WHERE state IN ('queued', 'sending')")
RECORD = """
UPDATE deliveries SET state = $1, attempts = attempts + 1, next_attempt_at = $2,
    platform_id = coalesce($3, platform_id), last_error = $4, updated_at = $5
WHERE id = $6
"""
MARK_BOUNCE = """
UPDATE deliveries SET bounce = 'pending' WHERE id = $1 AND bounce IS NULL AND
    (SELECT mail_from FROM messages WHERE messages.id = deliveries.message_id) != ''
"""
ADD_EVENT = "INSERT INTO events (delivery_id, at, kind, detail) VALUES ($1, $2, $3, $4)"
PURGE = """
DELETE FROM messages WHERE received_at < $1 AND NOT EXISTS (SELECT 1 FROM deliveries d
    WHERE d.message_id = messages.id AND (d.state IN ('queued', 'sending')
    OR d.updated_at >= $1))
"""


class PgSpool:
    def __init__(self, url: str, *, clock: Callable[[], float] = time.time,
                 on_notify: Callable[[], None] | None = None) -> None:
        self.url = url
        self.clock = clock
        self.link = Link(url, on_notify=on_notify)

    def __repr__(self) -> str:
        return f"PgSpool({self.link!r})"

    @property
    def commits(self) -> int:
        return self.link.commits

    @property
    def healthy(self) -> bool:
        return self.link.healthy

    async def start(self, *, recover: bool = True) -> int:
        await self.link.start(prepare)
        return 0

    async def stop(self) -> None:
        await self.link.stop()

    # --- the accept path ---------------------------------------------------------------------

    def accept(self, message: IncomingMessage) -> Any:
        now = self.clock()
        queue_id = new_queue_id(now)
        texts, requests = pack_requests([d.request for d in message.deliveries])
        recipients = [d.recipient for d in message.deliveries]

        async def insert(conn: asyncpg.Connection) -> str:
            await conn.execute(ACCEPT, queue_id, now, message.mail_from, message.peer,
                               message.helo, message.auth_user, len(message.raw), message.raw,
                               texts, recipients, requests)
            return queue_id
        return self.link.submit(insert, wakes=True)

    # --- the delivery path -------------------------------------------------------------------

    async def lease(self, limit: int, lease_seconds: float) -> list[Delivery]:
        async def take(conn: asyncpg.Connection) -> list[Delivery]:
            now = self.clock()
            rows = await conn.fetch(LEASE, now + lease_seconds, now, limit)
            return [Delivery(id=row["id"], message_id=row["message_id"],
                             recipient=row["recipient"],
                             request=unpack_request(row["request"], load_texts(row["texts"])),
                             attempts=row["attempts"], received_at=row["received_at"],
                             auth_user=row["auth_user"])
                    for row in rows]
        result: list[Delivery] = await self.link.submit(take)
        return result

    async def next_due(self) -> float | None:
        async def earliest(conn: asyncpg.Connection) -> float | None:
            value = await conn.fetchval(NEXT_DUE)
            return None if value is None else float(value)
        return await self.link.read(earliest)

    async def record(self, result: Result) -> None:
        async def write(conn: asyncpg.Connection) -> None:
            now = self.clock()
            status = await conn.execute(
                RECORD, result.state, result.next_attempt_at, result.platform_id,
                None if result.state == "sent" else result.detail, now, result.delivery_id)
            if status.endswith(" 0"):
                return   # dropped by an operator while it was being sent
            if result.bounce:
                await conn.execute(MARK_BOUNCE, result.delivery_id)
            await conn.execute(ADD_EVENT, result.delivery_id, now, result.event, result.detail)
        await self.link.submit(write)

    async def purge(self, older_than: float) -> int:
        async def delete(conn: asyncpg.Connection) -> int:
            status: str = await conn.execute(PURGE, older_than)
            return int(status.rsplit(" ", 1)[-1])
        result: int = await self.link.submit(delete)
        return result
