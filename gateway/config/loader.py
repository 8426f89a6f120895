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
from gateway.config.access import check_access
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
    SpoolConfig,
)
from gateway.config.routes import parse_routes
from gateway.config.smtp import read_smtp
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
    smtp = read_smtp(v.section(top, "smtp", problems), problems, env, secrets)
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
