"""The YAML configuration: read once, validated once, frozen.

Every mistake is collected (not just the first) and reported as one line naming its key path, so
an operator fixes a file in one round. What comes out is a tree of frozen dataclasses; nothing
downstream sees raw YAML.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config import validation as v
from gateway.config.credentials import TOKEN_KEYS, read_token
from gateway.config.domains import DomainConfig, parse_domains
from gateway.config.units import parse_duration, parse_hostport
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.config.access import AuthSettings, TlsSettings

DEFAULT_PATH = "/etc/smtp2pulse/config.yaml"
DEFAULT_BASE_URL = "https://1-pulse.kupon.mobi/api/v1/bulk"

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class Secret:
    """A string that never shows itself in a repr, a log line or an error message."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


def mask(token: str) -> str:
    """How a token appears anywhere a person can read it."""
    return "***" if token else ""


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int
    # SMTP listeners only: None follows smtp.tls.require_starttls / smtp.auth.required.
    require_starttls: bool | None = None
    require_auth: bool | None = None
    implicit_tls: bool = False
    accept_any_credentials: bool | None = None   # None: smtp.auth.accept_any_credentials

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    listen: tuple[Listener, ...] = (Listener("127.0.0.1", 2525),)
    hostname: str = "smtp2pulse.local"
    max_message_size: int = 1024 * 1024
    max_recipients: int = 100
    allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    timeout: float = 300.0
    fallback_charset: str = "cp1251"
    tls: TlsSettings | None = None          # gateway.access
    auth: AuthSettings | None = None        # None: AUTH is not offered
    max_connections: int = 100
    max_connections_per_address: int = 20
    max_messages_per_minute_per_user: int = 0       # 0: no limit
    max_messages_per_minute_per_address: int = 0
    null_sender: str = "refuse"             # refuse | drop | accept (MAIL FROM:<>, bounces)
    auto_submitted: str = "refuse"          # the same, for auto-replies and Auto-Submitted mail
    ipv6_prefix: int = 64                   # IPv6 clients are counted and blocked per prefix
    max_session_duration: float = 3600.0    # then 421 at the next command, however busy


@dataclass(frozen=True, slots=True)
class ApiConfig:
    base_url: str = DEFAULT_BASE_URL
    token: Secret = field(default_factory=lambda: Secret(""))
    timeout: float = 10.0
    dry_run: bool = False
    max_concurrency: int = 8
    max_rate: float = 0.0      # requests per second to the platform; 0 = no cap

    @property
    def send_url(self) -> str:
        return self.base_url.rstrip("/") + "/send-message"


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    path: Path = Path("/var/lib/smtp2pulse/spool.sqlite3")
    url: Secret | None = None   # postgresql://…: a database shared by several gateways
    retry: tuple[float, ...] = (30.0, 120.0, 600.0, 1800.0, 3600.0)
    give_up_after: float = 2 * 86400.0


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The status side: health, metrics, delivery-status callbacks."""

    listen: Listener
    public_url: str | None = None
    callback_secret: Secret = field(default_factory=lambda: Secret(""))
    # Who may read /metrics and /messages (message history is personal data); /healthz and the
    # signed /callback are open to all, since the platform must reach the latter.
    allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = LOOPBACK

    @property
    def callback_url(self) -> str | None:
        return self.public_url.rstrip("/") + "/callback" if self.public_url else None


@dataclass(frozen=True, slots=True)
class BounceConfig:
    """Delivery status notifications (RFC 3464) to the envelope sender; off by default."""

    enabled: bool = False
    relay: Listener = Listener("127.0.0.1", 25)
    sender: str = ""          # the From: of the notification; "" = MAILER-DAEMON@smtp.hostname
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    smtp: SmtpConfig
    api: ApiConfig
    spool: SpoolConfig
    domains: Mapping[str, DomainConfig]
    http: HttpConfig | None = None
    bounces: BounceConfig = BounceConfig()
    shutdown_timeout: float = 15.0
    log_level: str = "info"
    log_format: str = "plain"
    log_mask_personal: bool = False    # phone numbers and e-mail addresses in logs
    source: str = "<memory>"

    def domain(self, name: str) -> DomainConfig | None:
        return self.domains.get(name.lower())


# --- loading ---------------------------------------------------------------------------------

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None,
                dry_run: bool = False) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem."""
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
    return parse_config(data, env=os.environ if env is None else env, dry_run=dry_run,
                        source=str(path))


def parse_config(data: Any, *, env: Mapping[str, str], dry_run: bool = False,
                 source: str = "<memory>") -> Config:
    problems = v.Problems()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of sections"])
    data = _substitute_env(data, "", env, problems)
    top = v.keys(data, "", {"smtp", "api", "spool", "http", "bounces", "domains",
                           "shutdown_timeout", "log"}, problems)
    smtp = _smtp(v.section(top, "smtp", problems), problems, env)
    api = _api(v.section(top, "api", problems), problems, dry_run, env)
    spool = _spool(v.section(top, "spool", problems), problems)
    http = _http(v.section(top, "http", problems), problems) if top.get("http") else None
    bounces = _bounces(v.section(top, "bounces", problems), problems)
    domains = parse_domains(top.get("domains"), problems)
    from gateway.config.access import check_access  # late: gateway.access uses this module
    check_access(smtp, domains, problems)
    shutdown = v.value(top, "shutdown_timeout", "", parse_duration, 15.0, problems)
    log = v.section(top, "log", problems)
    v.keys(log, "log", {"level", "format", "mask_personal_data"}, problems)
    level = v.choice(log, "level", "log", ("debug", "info", "warning", "error"), "info", problems)
    log_format = v.choice(log, "format", "log", ("plain", "json"), "plain", problems)
    log_mask = v.value(log, "mask_personal_data", "log", v.boolean, False, problems)
    if problems.lines:
        raise ConfigError(problems.lines)
    return Config(smtp=smtp, api=api, spool=spool, domains=domains, http=http, bounces=bounces,
                  shutdown_timeout=shutdown, log_level=level, log_format=log_format,
                  log_mask_personal=log_mask, source=source)


def _substitute_env(node: Any, path: str, env: Mapping[str, str], problems: v.Problems) -> Any:
    if isinstance(node, dict):
        return {k: _substitute_env(v, _child_path(path, k), env, problems)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_env(v, f"{path}[{i}]", env, problems) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.add(path, f"environment variable {name} is not set "
                               f"(write ${{{name}:-default}} to make it optional)")
            return ""
        return _ENV_REF.sub(replace, node)
    return node


def _child_path(path: str, key: object) -> str:
    if path == "domains":
        return f"domains[{key}]"
    return v.join(path, str(key))


def _listeners(value: Any) -> tuple[Listener, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("at least one host:port is needed")
    from gateway.config.access import listener_entry  # late: gateway.access uses this module
    return tuple(listener_entry(item) for item in items)


def _smtp(data: dict[str, Any], problems: v.Problems, env: Mapping[str, str]) -> SmtpConfig:
    from gateway.config.access import read_auth, read_tls  # late: gateway.access uses this module
    path = "smtp"
    v.keys(data, path, {"listen", "hostname", "max_message_size", "max_recipients",
                       "allow_networks", "tls", "auth", "timeout", "fallback_charset",
                       "max_connections", "max_connections_per_address",
                       "max_messages_per_minute_per_user", "max_messages_per_minute_per_address",
                       "null_sender", "auto_submitted", "ipv6_prefix",
                       "max_session_duration"}, problems)
    defaults = SmtpConfig()
    tls_data, auth_data = (v.section(data, key, problems, path) for key in ("tls", "auth"))
    hygiene = ("refuse", "drop", "accept")
    return SmtpConfig(
        tls=read_tls(tls_data, problems) if tls_data else None,
        auth=read_auth(auth_data, problems, env) if auth_data else None,
        max_connections=v.value(data, "max_connections", path, v.integer(1, 100_000),
                               defaults.max_connections, problems),
        max_connections_per_address=v.value(data, "max_connections_per_address", path,
                                           v.integer(1, 100_000),
                                           defaults.max_connections_per_address, problems),
        max_messages_per_minute_per_user=v.value(data, "max_messages_per_minute_per_user", path,
                                                v.integer(0), 0, problems),
        max_messages_per_minute_per_address=v.value(data, "max_messages_per_minute_per_address",
                                                   path, v.integer(0), 0, problems),
        null_sender=v.choice(data, "null_sender", path, hygiene, defaults.null_sender, problems),
        auto_submitted=v.choice(data, "auto_submitted", path, hygiene, defaults.auto_submitted,
                               problems),
        listen=v.value(data, "listen", path, _listeners, defaults.listen, problems),
        hostname=v.value(data, "hostname", path, v.hostname, defaults.hostname, problems),
        max_message_size=v.value(data, "max_message_size", path, v.positive_size,
                                defaults.max_message_size, problems),
        max_recipients=v.value(data, "max_recipients", path, v.integer(1, 100_000),
                              defaults.max_recipients, problems),
        allow_networks=v.value(data, "allow_networks", path, v.networks, (), problems),
        timeout=v.value(data, "timeout", path, v.positive_duration, defaults.timeout, problems),
        fallback_charset=v.value(data, "fallback_charset", path, v.charset_name,
                                defaults.fallback_charset, problems),
        ipv6_prefix=v.value(data, "ipv6_prefix", path, v.integer(32, 128), defaults.ipv6_prefix,
                           problems),
        max_session_duration=v.value(data, "max_session_duration", path, v.positive_duration,
                                    defaults.max_session_duration, problems),
    )


def _api(data: dict[str, Any], problems: v.Problems, dry_run: bool, env: Mapping[str, str]
         ) -> ApiConfig:
    path = "api"
    v.keys(data, path, {"base_url", "timeout", "dry_run", "max_concurrency", "max_rate",
                        *TOKEN_KEYS},
          problems)
    defaults = ApiConfig()
    dry = v.value(data, "dry_run", path, v.boolean, False, problems) or dry_run
    token = read_token(data, path, env, problems.add)
    if not token and not dry and not any(data.get(key) for key in TOKEN_KEYS):
        problems.add("api.token", "is required (or run with --dry-run / api.dry_run: true)")
    return ApiConfig(
        base_url=v.value(data, "base_url", path, v.url, defaults.base_url, problems),
        token=Secret(token),
        timeout=v.value(data, "timeout", path, v.positive_duration, defaults.timeout, problems),
        dry_run=dry,
        max_concurrency=v.value(data, "max_concurrency", path, v.integer(1, 1000),
                               defaults.max_concurrency, problems),
        max_rate=v.value(data, "max_rate", path, _rate, 0.0, problems),
    )


def _http(data: dict[str, Any], problems: v.Problems) -> HttpConfig:
    path = "http"
    v.keys(data, path, {"listen", "public_url", "callback_secret", "allow_networks"}, problems)
    if "listen" not in data:
        problems.add("http.listen", "is required when the http section is present")
    listen = v.value(data, "listen", path, lambda raw: Listener(*parse_hostport(raw)),
                    Listener("127.0.0.1", 8025), problems)
    # "" (an unset ${PUBLIC_URL:-}) means no callbacks, like leaving the key out.
    public_url = v.value(data, "public_url", path, v.url, None, problems) \
        if data.get("public_url") else None
    secret = v.value(data, "callback_secret", path, v.text, "", problems)
    # Absent (or ""), the spool makes one and keeps it; one that is set must be strong.
    if secret and len(secret) < 16:
        problems.add("http.callback_secret", "at least 16 characters are required "
                     "(callbacks are signed with it); leave it out to have one made")
    return HttpConfig(listen=listen, public_url=public_url, callback_secret=Secret(secret),
                      allow_networks=v.value(data, "allow_networks", path, v.networks, LOOPBACK,
                                            problems))


def _bounces(data: dict[str, Any], problems: v.Problems) -> BounceConfig:
    path = "bounces"
    v.keys(data, path, {"enabled", "relay", "from", "timeout"}, problems)
    defaults = BounceConfig()
    return BounceConfig(
        enabled=v.value(data, "enabled", path, v.boolean, False, problems),
        relay=v.value(data, "relay", path, lambda raw: Listener(*parse_hostport(raw)),
                     defaults.relay, problems),
        sender=v.value(data, "from", path, v.text, "", problems),
        timeout=v.value(data, "timeout", path, v.positive_duration, defaults.timeout, problems),
    )


def _rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} is not a number of requests per second")
    try:
        rate = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number of requests per second") from None
    if rate < 0:
        raise ValueError(f"{value!r} is negative (0 means no cap)")
    return rate


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
        problems.add("spool.url", "give spool.path (one SQLite file) or spool.url"
                     " (PostgreSQL), not both")
    return SpoolConfig(
        path=v.value(data, "path", path, lambda raw: Path(v.text(raw)), defaults.path, problems),
        url=v.value(data, "url", path, _database_url, None, problems),
        retry=v.value(data, "retry", path, _retry, defaults.retry, problems),
        give_up_after=v.value(data, "give_up_after", path, v.positive_duration,
                             defaults.give_up_after, problems),
    )


