"""Small values the spool keeps for the gateways that use it: the callback secret (made and
kept by jobs.get_or_set under CALLBACK_SECRET).

Kept in the spool (its `meta` table) rather than a file of its own: it then survives restarts
with the messages whose callback URLs it signed, and is the same for every gateway of a shared
spool.
"""

from __future__ import annotations

import dataclasses

from gateway.config.model import Config, Secret

CALLBACK_SECRET = "callback_secret"  # noqa: S105 - the key it is kept under


def with_callback_secret(config: Config, secret: str | None) -> Config:
    """`config` signing callbacks with the spool's secret, unless it names one of its own."""
    if config.http is None or config.http.callback_secret or not secret:
        return config
    return dataclasses.replace(
        config, http=dataclasses.replace(config.http, callback_secret=Secret(secret))
    )
