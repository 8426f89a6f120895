"""The `smtp:` section: where to listen, what a session may send, and who may connect.

Its `tls` subsection is read here (the context is built, so checked, at load: config/tls.py);
`auth` and each listener's policy by gateway.config.access.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config import validation as v
from gateway.config.access import listener_entry, read_auth
from gateway.config.model import HANDSHAKE_TIMEOUT, Listener, SmtpConfig, TlsSettings
from gateway.config.tls import MIN_VERSIONS, server_context, unloaded_context


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


def read_tls(
    data: dict[str, Any], problems: v.Problems, secrets: bool = True
) -> TlsSettings | None:
    path = "smtp.tls"
    v.keys(
        data,
        path,
        {"cert", "key", "min_version", "require_starttls", "implicit_listen", "handshake_timeout"},
        problems,
    )
    for key in ("cert", "key"):
        if not data.get(key):
            problems.add(f"{path}.{key}", "is required when the tls section is present")
    if isinstance(data.get("min_version"), float):
        # YAML reads an unquoted 1.3 as a number; str() gives back what was written.
        data = {**data, "min_version": str(data["min_version"])}
    min_version = v.choice(data, "min_version", path, tuple(MIN_VERSIONS), "1.2", problems)
    no_listeners: tuple[Listener, ...] = ()
    implicit = v.value(
        data,
        "implicit_listen",
        path,
        lambda raw: tuple(
            listener_entry(item, implicit_tls=True)
            for item in (raw if isinstance(raw, list) else [raw])
        ),
        no_listeners,
        problems,
    )
    require = v.value(data, "require_starttls", path, v.boolean, False, problems)
    handshake_timeout = v.value(
        data, "handshake_timeout", path, v.positive_duration, HANDSHAKE_TIMEOUT, problems
    )
    if not data.get("cert") or not data.get("key"):
        return None
    cert_path, key_path = Path(v.text(data["cert"])), Path(v.text(data["key"]))
    try:
        context = (
            server_context(cert_path, key_path, min_version)
            if secrets
            else unloaded_context(min_version)
        )
    except ValueError as exc:
        problems.add(f"{path}.cert", str(exc))
        return None
    return TlsSettings(
        cert=cert_path,
        key=key_path,
        context=context,
        min_version=min_version,
        require_starttls=require,
        implicit_listen=implicit,
        handshake_timeout=handshake_timeout,
    )
