"""The loaded configuration: the tree of frozen dataclasses every stage reads.

Built only by gateway.config.loader (and its section readers); kept apart from them so that
whatever reads a config (the sender process included) imports neither YAML nor the readers.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config.quiet import QuietHours

DEFAULT_BASE_URL = "https://1-pulse.kupon.mobi/api/v1/bulk"

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
HTML_TYPES = frozenset({"email", "push"})


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
    accept_any_credentials: bool | None = None  # None: smtp.auth.accept_any_credentials

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
    tls: TlsSettings | None = None
    auth: AuthSettings | None = None  # None: AUTH is not offered
    max_connections: int = 100
    max_connections_per_address: int = 20
    max_messages_per_minute_per_user: int = 0  # 0: no limit
    max_messages_per_minute_per_address: int = 0
    null_sender: str = "refuse"  # refuse | drop | accept (MAIL FROM:<>, bounces)
    auto_submitted: str = "refuse"  # the same, for auto-replies and Auto-Submitted mail
    ipv6_prefix: int = 64  # IPv6 clients are counted and blocked per prefix
    max_session_duration: float = 3600.0  # then 421 at the next command, however busy


@dataclass(frozen=True, slots=True)
class ApiConfig:
    base_url: str = DEFAULT_BASE_URL
    token: Secret = field(default_factory=lambda: Secret(""))
    timeout: float = 10.0
    dry_run: bool = False
    max_concurrency: int = 8
    max_rate: float = 0.0  # requests per second to the platform; 0 = no cap
    sender: str = "inline"  # inline | process (the sends in a child process)
    # >1: deliveries due together that share token, type, sender and charset go as one
    # send-list-messages request of at most this many.
    batch_size: int = 1
    # With requests in flight, how long a new batch may wait to fill before it is leased.
    batch_wait: float = 0.05

    @property
    def send_url(self) -> str:
        return self.base_url.rstrip("/") + "/send-message"

    @property
    def batch_url(self) -> str:
        return self.base_url.rstrip("/") + "/send-list-messages"


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    path: Path = Path("/var/lib/smtp2pulse/spool.sqlite3")
    url: Secret | None = None  # postgresql://…: a database shared by several gateways
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
    sender: str = ""  # the From: of the notification; "" = MAILER-DAEMON@smtp.hostname
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    smtp: SmtpConfig
    api: ApiConfig
    spool: SpoolConfig
    domains: Mapping[str, DomainConfig]
    http: HttpConfig | None = None
    routes: tuple[Route, ...] = ()
    bounces: BounceConfig = BounceConfig()
    shutdown_timeout: float = 15.0
    event_loop: str = "auto"  # auto (uvloop when installed) | uvloop | asyncio
    log_level: str = "info"
    log_format: str = "plain"
    log_mask_personal: bool = False  # phone numbers and e-mail addresses in logs
    source: str = "<memory>"

    @property
    def sends_pictures(self) -> bool:
        """Whether any domain sends the mail's picture (domains.NAME.images)."""
        return any(domain.images for domain in self.domains.values())

    def domain(self, name: str) -> DomainConfig | None:
        return self.domains.get(name.lower())


HANDSHAKE_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert: Path
    key: Path
    context: ssl.SSLContext = field(compare=False, repr=False)
    min_version: str = "1.2"
    require_starttls: bool = False  # default for plain listeners
    implicit_listen: tuple[Listener, ...] = ()
    # An SMTPS connection holds a connection slot from accept to the end of its handshake.
    handshake_timeout: float = HANDSHAKE_TIMEOUT


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password_hash: Secret
    domains: frozenset[str] = frozenset()  # empty: every served domain
    senders: frozenset[str] | None = None  # None: any sender name
    token: Secret | None = None  # None: api.token


@dataclass(frozen=True, slots=True)
class AuthSettings:
    users: Mapping[str, User]
    required: bool = True  # default for every listener (false with no users)
    allow_without_tls: bool = False
    accept_any_credentials: bool = False
    max_failures: int = 3
    block_for: float = 300.0


@dataclass(frozen=True, slots=True)
class PhoneRewrite:
    match: re.Pattern[str]
    replace: str


@dataclass(frozen=True, slots=True)
class Limits:
    """What a domain may spend (config `limits`, read by gateway.config.limits)."""

    per_recipient: tuple[int, float] | None = None  # messages to one recipient, window seconds
    messages_per_day: int | None = None
    parts_per_day: int | None = None  # sms and bulk: SMS parts in the domain's calendar day
    over_limit: str = "hold"  # hold | drop | refuse
    notify: str | None = None  # an address of a served domain, told once a day of a trip


@dataclass(frozen=True, slots=True)
class DomainConfig:
    name: str
    type: str
    recipient: str = "phone"
    text: str | None = None
    html: bool = True
    max_length: int | None = None
    strip_signature: bool = True
    rewrite: tuple[PhoneRewrite, ...] = ()
    allow_headers: frozenset[str] = frozenset()
    max_parts: int | None = None  # SMS parts a text may take; longer is cut
    transliterate: bool = False  # Cyrillic to Latin so the text stays GSM-7
    quiet_hours: QuietHours | None = None
    timezone: ZoneInfo | None = None  # None: the machine's local time
    # Lower-cased local part -> the sent_to of each of its targets.
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Platform fields sent as they are; a None one is not sent.
    fields: Mapping[str, str] = field(default_factory=dict)
    images: bool = False  # the mail's first picture sent as `image` (gateway.config.images)
    images_max_size: int = 5 * 1024 * 1024  # bytes of that picture as it came, at most
    limits: Limits | None = None
    # Seconds within which the same sent_text to the same recipient is kept, not sent again.
    repeat_window: float | None = None

    @property
    def sends_html(self) -> bool:
        return self.html and self.type in HTML_TYPES


@dataclass(frozen=True, slots=True)
class Recipient:
    """One person an envelope recipient reaches (see gateway.config.recipients, which makes
    them; here so that a route can hold the ones its `to:` names)."""

    address: str  # the envelope address as the client wrote it in RCPT TO
    domain: str  # the served domain it belongs to, lower-case
    sent_to: str  # what goes into the platform's sent_to


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """What a route asks of a message; every condition given must hold. The patterns are
    compiled RE2 (gateway.config.routes), whose matching is linear in the text."""

    senders: Any = None  # glob: envelope sender or From: address
    recipients: Any = None  # glob: a RCPT TO address
    subject: Any = None  # searched in the decoded subject
    body: Any = None  # searched in the decoded text body
    headers: tuple[tuple[str, Any], ...] = ()  # lower-case name, pattern for its value
    texts: Mapping[str, str] = field(default_factory=dict)  # as written, for people


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    match: RouteMatch
    to: tuple[str, ...] = ()  # as written
    recipients: tuple[Recipient, ...] = ()  # `to` resolved (aliases expanded) at load
    drop: bool = False
    set: Mapping[str, str] = field(default_factory=dict)  # as written, for people
    # Each served domain as `set` makes it for this route's messages; empty: no `set`.
    domains: Mapping[str, DomainConfig] = field(default_factory=dict)

    @property
    def action(self) -> str:
        """What the route does, for check-config, preview and logs."""
        if self.drop:
            return "drop"
        parts = []
        if self.to:
            parts.append("to " + ", ".join(self.to))
        if self.set:
            parts.append("set " + ", ".join(f"{k}={v}" for k, v in self.set.items()))
        return "; ".join(parts)
