"""The YAML configuration: read once, validated once, frozen.

Every mistake is collected (not just the first) and reported as one line naming its key path, so
an operator fixes a file in one round. What comes out is a tree of frozen dataclasses; nothing
downstream sees raw YAML.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config import validation as v
from gateway.config.access import check_access, listener_entry, read_auth, read_tls
from gateway.config.api import read_api
from gateway.config.domains import parse_domains
from gateway.config.environment import substitute_env
from gateway.config.images import check_images
from gateway.config.model import (
    LOOPBACK,
    BounceConfig,
    Config,
    HttpConfig,
    Listener,
    Secret,
    SmtpConfig,
    SpoolConfig,
)
from gateway.config.routes import parse_routes
from gateway.config.units import parse_duration, parse_hostport
from gateway.errors import ConfigError

DEFAULT_PATH = "/etc/smtp2pulse/config.yaml"
LOOPS = ("auto", "uvloop", "asyncio")
# --- loading ---------------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    dry_run: bool = False,
    secrets: bool = True,
) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem.

    `secrets=False` is for the commands that only read the spool (`queue`): every key is still
    checked, but token files, systemd credentials and TLS keys are not read, as the operator's
    shell has neither the service's CREDENTIALS_DIRECTORY nor the right to its files. Such a
    Config has no tokens and a TLS context without a certificate: it never serves."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    # Imported here, not at the top: the sender process needs this module but not YAML.
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}: not valid YAML{at}: {reason}"]) from None
    except RecursionError:
        # PyYAML builds nested collections recursively: thousands of "[" exhaust the stack.
        raise ConfigError([f"{path}: nested too deeply to be a configuration"]) from None
    return parse_config(
        data,
        env=os.environ if env is None else env,
        dry_run=dry_run,
        source=str(path),
        secrets=secrets,
    )


def parse_config(
    data: Any,
    *,
    env: Mapping[str, str],
    dry_run: bool = False,
    source: str = "<memory>",
    secrets: bool = True,
) -> Config:
    problems = v.Problems()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of sections"])
    data = substitute_env(data, "", env, problems, secrets)
    top = v.keys(
        data,
        "",
        {
            "smtp",
            "api",
            "spool",
            "http",
            "bounces",
            "domains",
            "shutdown_timeout",
            "log",
            "event_loop",
            "routes",
        },
        problems,
    )
    smtp = _smtp(v.section(top, "smtp", problems), problems, env, secrets)
    api = read_api(v.section(top, "api", problems), problems, dry_run, env, secrets)
    spool = _spool(v.section(top, "spool", problems), problems)
    http = _http(v.section(top, "http", problems), problems) if top.get("http") else None
    bounces = _bounces(v.section(top, "bounces", problems), problems)
    domains = parse_domains(top.get("domains"), problems)
    check_access(smtp, domains, problems)
    check_images(domains, http, problems)
    routes = parse_routes(top.get("routes"), domains, problems)
    event_loop = v.choice(top, "event_loop", "", LOOPS, "auto", problems)
    shutdown = v.value(top, "shutdown_timeout", "", parse_duration, 15.0, problems)
    log = v.section(top, "log", problems)
    v.keys(log, "log", {"level", "format", "mask_personal_data"}, problems)
    level = v.choice(log, "level", "log", ("debug", "info", "warning", "error"), "info", problems)
    log_format = v.choice(log, "format", "log", ("plain", "json"), "plain", problems)
    log_mask = v.value(log, "mask_personal_data", "log", v.boolean, False, problems)
    if problems.lines:
        raise ConfigError(problems.lines)
    return Config(
        smtp=smtp,
        api=api,
        spool=spool,
        domains=domains,
        http=http,
        bounces=bounces,
        routes=routes,
        shutdown_timeout=shutdown,
        event_loop=event_loop,
        log_level=level,
        log_format=log_format,
        log_mask_personal=log_mask,
        source=source,
    )


def _listeners(value: Any) -> tuple[Listener, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("at least one host:port is needed")
    return tuple(listener_entry(item) for item in items)


def _smtp(
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


def _http(data: dict[str, Any], problems: v.Problems) -> HttpConfig:
    path = "http"
    v.keys(data, path, {"listen", "public_url", "callback_secret", "allow_networks"}, problems)
    if "listen" not in data:
        problems.add("http.listen", "is required when the http section is present")
    listen = v.value(
        data,
        "listen",
        path,
        lambda raw: Listener(*parse_hostport(raw)),
        Listener("127.0.0.1", 8025),
        problems,
    )
    # "" (an unset ${PUBLIC_URL:-}) means no callbacks, like leaving the key out.
    public_url = (
        v.value(data, "public_url", path, v.url, None, problems) if data.get("public_url") else None
    )
    secret = v.value(data, "callback_secret", path, v.text, "", problems)
    # Absent (or ""), the spool makes one and keeps it; one that is set must be strong.
    if secret and len(secret) < 16:
        problems.add(
            "http.callback_secret",
            "at least 16 characters are required "
            "(callbacks are signed with it); leave it out to have one made",
        )
    return HttpConfig(
        listen=listen,
        public_url=public_url,
        callback_secret=Secret(secret),
        allow_networks=v.value(data, "allow_networks", path, v.networks, LOOPBACK, problems),
    )


def _bounces(data: dict[str, Any], problems: v.Problems) -> BounceConfig:
    path = "bounces"
    v.keys(data, path, {"enabled", "relay", "from", "timeout"}, problems)
    defaults = BounceConfig()
    return BounceConfig(
        enabled=v.value(data, "enabled", path, v.boolean, False, problems),
        relay=v.value(
            data,
            "relay",
            path,
            lambda raw: Listener(*parse_hostport(raw)),
            defaults.relay,
            problems,
        ),
        sender=v.value(data, "from", path, v.text, "", problems),
        timeout=v.value(data, "timeout", path, v.positive_duration, defaults.timeout, problems),
    )


def _retry(value: Any) -> tuple[float, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("at least one wait is needed, e.g. [30s, 2m, 10m]")
    return tuple(parse_duration(item) for item in items)


def _database_url(raw: Any) -> Secret:
    url = v.text(raw)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in ("postgresql", "postgres"):
        # The URL may hold a password: the message names the scheme only.
        raise ValueError(f"must be a postgresql:// URL (got {scheme or 'no'} scheme)")
    return Secret(url)


def _spool(data: dict[str, Any], problems: v.Problems) -> SpoolConfig:
    path = "spool"
    v.keys(data, path, {"path", "url", "retry", "give_up_after"}, problems)
    defaults = SpoolConfig()
    if "path" in data and "url" in data:
        problems.add(
            "spool.url", "give spool.path (one SQLite file) or spool.url (PostgreSQL), not both"
        )
    return SpoolConfig(
        path=v.value(data, "path", path, lambda raw: Path(v.text(raw)), defaults.path, problems),
        url=v.value(data, "url", path, _database_url, None, problems),
        retry=v.value(data, "retry", path, _retry, defaults.retry, problems),
        give_up_after=v.value(
            data, "give_up_after", path, v.positive_duration, defaults.give_up_after, problems
        ),
    )
