"""Which platform token pays for a queued message, read at send time from the running config."""

from __future__ import annotations

import logging

from gateway.config.model import Config

log = logging.getLogger("smtp2pulse.access")


def token_for(config: Config, user_name: str | None) -> str:
    """The platform token for a message: its user's own, else api.token."""
    auth = config.smtp.auth
    user = auth.users.get(user_name) if auth is not None and user_name else None
    if user_name and user is None:
        # Removed from the config (and reloaded) while its mail was queued: say whose account
        # now pays for it.
        log.warning(
            "user %s is no longer configured; its queued mail goes with api.token", user_name
        )
    return (user.token if user is not None and user.token else config.api.token).reveal()
