"""The `smtp:` section: where to listen, what a session may send, and who may connect.

Its `tls` and `auth` subsections and each listener's policy are read by gateway.config.access.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config import validation as v
from gateway.config.access import listener_entry, read_auth, read_tls
from gateway.config.model import Listener, SmtpConfig


def _listeners(value: Any) -> tuple[Listener, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("at least one host:port is needed")
    return tuple(listener_entry(item) for item in items)


def read_smtp(
    data: dict[str, Any], problems: v.Problems, env: Mapping[str, str], secrets: bool
) -> SmtpConfig:
    path = "smtp"
    v.keys(
        data,
        path,
        {
            "listen",
            "hostname",
            "max_message_size",
            "max_recipients",
            "allow_networks",
            "tls",
            "auth",
            "timeout",
            "fallback_charset",
            "max_connections",
            "max_connections_per_address",
            "max_messages_per_minute_per_user",
            "max_messages_per_minute_per_address",
            "null_sender",
            "auto_submitted",
            "ipv6_prefix",
            "max_session_duration",
        },
        problems,
    )
    defaults = SmtpConfig()
    tls_data, auth_data = (v.section(data, key, problems, path) for key in ("tls", "auth"))
    hygiene = ("refuse", "drop", "accept")
    return SmtpConfig(
        tls=read_tls(tls_data, problems, secrets) if tls_data else None,
        auth=read_auth(auth_data, problems, env, secrets) if auth_data else None,
        max_connections=v.value(
            data, "max_connections", path, v.integer(1, 100_000), defaults.max_connections, problems
        ),
        max_connections_per_address=v.value(
            data,
            "max_connections_per_address",
            path,
            v.integer(1, 100_000),
            defaults.max_connections_per_address,
            problems,
        ),
        max_messages_per_minute_per_user=v.value(
            data, "max_messages_per_minute_per_user", path, v.integer(0), 0, problems
        ),
        max_messages_per_minute_per_address=v.value(
            data, "max_messages_per_minute_per_address", path, v.integer(0), 0, problems
        ),
        null_sender=v.choice(data, "null_sender", path, hygiene, defaults.null_sender, problems),
        auto_submitted=v.choice(
            data, "auto_submitted", path, hygiene, defaults.auto_submitted, problems
        ),
        listen=v.value(data, "listen", path, _listeners, defaults.listen, problems),
        hostname=v.value(data, "hostname", path, v.hostname, defaults.hostname, problems),
        max_message_size=v.value(
            data, "max_message_size", path, v.positive_size, defaults.max_message_size, problems
        ),
        max_recipients=v.value(
            data, "max_recipients", path, v.integer(1, 100_000), defaults.max_recipients, problems
        ),
        allow_networks=v.value(data, "allow_networks", path, v.networks, (), problems),
        timeout=v.value(data, "timeout", path, v.positive_duration, defaults.timeout, problems),
        fallback_charset=v.value(
            data, "fallback_charset", path, v.charset_name, defaults.fallback_charset, problems
        ),
        ipv6_prefix=v.value(
            data, "ipv6_prefix", path, v.integer(32, 128), defaults.ipv6_prefix, problems
        ),
        max_session_duration=v.value(
            data,
            "max_session_duration",
            path,
            v.positive_duration,
            defaults.max_session_duration,
            problems,
        ),
    )
