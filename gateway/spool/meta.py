"""Small values the spool keeps for the gateways that use it: the callback secret.

Kept in the spool (its `meta` table) rather than a file of its own: it then survives restarts
with the messages whose callback URLs it signed, and is the same for every gateway of a shared
spool.
"""

from __future__ import annotations

import dataclasses
import sqlite3

from gateway.config.model import Config, Secret
from gateway.spool import sql

CALLBACK_SECRET = "callback_secret"  # noqa: S105 - the key it is kept under


def get_or_set(conn: sqlite3.Connection, key: str, value: str) -> str:
    """The value kept under `key`, `value` if there was none: one statement decides, so two
    gateways starting at once end up with the same."""
    conn.execute(sql.META_IF_ABSENT, (key, value))
    return str(conn.execute(sql.META_VALUE, (key,)).fetchone()[0])


def with_callback_secret(config: Config, secret: str | None) -> Config:
    """`config` signing callbacks with the spool's secret, unless it names one of its own."""
    if config.http is None or config.http.callback_secret or not secret:
        return config
    return dataclasses.replace(config, http=dataclasses.replace(
        config.http, callback_secret=Secret(secret)))
