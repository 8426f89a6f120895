"""Small values the spool keeps for the gateways that use it: the callback secret.

Kept in the spool (its `meta` table) rather than a file of its own: it then survives restarts
with the messages whose callback URLs it signed, and is the same for every gateway of a shared
spool.
"""

from __future__ import annotations

import dataclasses
import secrets
import sqlite3

from gateway.config.loader import Config, Secret
from gateway.spool.store import Spool

CALLBACK_SECRET = "callback_secret"  # noqa: S105 - the key it is kept under


async def callback_secret(spool: Spool) -> str:
    """The spool's callback secret, made (random, 256 bits) the first time it is asked for."""
    candidate = secrets.token_urlsafe(32)

    def get_or_make(conn: sqlite3.Connection) -> str:
        # One statement decides, so two gateways starting at once end up with the same one.
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
                     (CALLBACK_SECRET, candidate))
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (CALLBACK_SECRET,)).fetchone()
        return str(row[0])
    return await spool.run(get_or_make)


def with_callback_secret(config: Config, secret: str | None) -> Config:
    """`config` signing callbacks with the spool's secret, unless it names one of its own."""
    if config.http is None or config.http.callback_secret or not secret:
        return config
    return dataclasses.replace(config, http=dataclasses.replace(
        config.http, callback_secret=Secret(secret)))
