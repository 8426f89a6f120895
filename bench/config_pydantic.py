"""A pydantic v2 model of part of the config (smtp's scalars, api, domains) for the bench only.

Not used by the gateway: it exists so that the bench can time and compare it with the hand-written
loader (gateway.config.loader). It reuses the gateway's own converters for durations, sizes,
URLs, windows and time zones, as a switch to pydantic would, so the two differ in the framework,
not in what a `30s` or a `10MiB` means. Not covered: `${ENV}` substitution, the token files and
credentials, aliases' targets, template placeholders and the cross-section checks.
"""

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from gateway.config import validation as v
from gateway.config.quiet import window, zone
from gateway.config.units import parse_duration

MessageType = Literal["sms", "push", "viber", "whatsapp", "telegram", "vk", "ok",
                      "email", "hlr", "voice", "mms", "bot", "bulk"]
ApiCharset = Literal["UTF16BE", "UTF16LE", "CP1251", "UTF-8", "UTF-16BE", "UTF-16LE",
                     "UCS-2BE", "UCS-2LE", "UCS2BE", "UCS2LE"]
Overridable = Literal["sender", "ttl", "send_date", "button", "action", "image"]

Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(v.positive_duration)]
Size = Annotated[int, BeforeValidator(v.positive_size)]
Url = Annotated[str, BeforeValidator(v.url)]
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def _domain_name(value: str) -> str:
    name = value.strip().lower()
    if not _DOMAIN_NAME.match(name):
        raise ValueError(f"{value!r} is not a domain name")
    return name


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return value


DomainName = Annotated[str, AfterValidator(_domain_name)]
Window = Annotated[Any, BeforeValidator(window)]
Zone = Annotated[Any, BeforeValidator(zone)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Api(_Strict):
    base_url: Url = "https://1-pulse.kupon.mobi/api/v1/bulk"
    token: str | None = None
    token_file: str | None = None
    token_credential: str | None = None
    timeout: PositiveDuration = 10.0
    dry_run: bool = False
    max_concurrency: int = Field(8, ge=1, le=1000)
    max_rate: float = Field(0.0, ge=0)
    sender: Literal["inline", "process"] = "inline"


class Rewrite(_Strict):
    match: Annotated[str, AfterValidator(_regex)]
    replace: str


class Domain(_Strict):
    type: MessageType
    recipient: Literal["phone", "email", "verbatim"] | None = None
    text: str | None = None
    html: bool = True
    max_length: int | None = Field(None, ge=2)
    strip_signature: bool = True
    rewrite: list[Rewrite] = []
    allow_headers: list[Overridable] = []
    sender: str | None = None
    ttl: int | None = Field(None, ge=1)
    charset: ApiCharset | None = None
    button: str | None = None
    action: str | None = None
    image: str | None = None
    find_token: bool = False
    kannel_status: bool = False
    max_parts: int | None = Field(None, ge=1, le=255)
    transliterate: bool = False
    quiet_hours: Window | None = None
    timezone: Zone | None = None
    quiet_hours_urgent: Literal["wait", "send"] = "wait"
    aliases: dict[str, str | list[str]] = {}
    aliases_file: str | None = None


Hygiene = Literal["refuse", "drop", "accept"]


class Smtp(_Strict):
    """The scalar keys of smtp; listen, tls and auth are taken as they come."""

    listen: Any = "127.0.0.1:2525"
    hostname: str = "smtp2pulse.local"
    max_message_size: Size = 1024 * 1024
    max_recipients: int = Field(100, ge=1, le=100_000)
    allow_networks: list[str] = []
    timeout: PositiveDuration = 300.0
    fallback_charset: str = "cp1251"
    tls: dict[str, Any] | None = None
    auth: dict[str, Any] | None = None
    max_connections: int = Field(100, ge=1, le=100_000)
    max_connections_per_address: int = Field(20, ge=1, le=100_000)
    max_messages_per_minute_per_user: int = Field(0, ge=0)
    max_messages_per_minute_per_address: int = Field(0, ge=0)
    null_sender: Hygiene = "refuse"
    auto_submitted: Hygiene = "refuse"
    ipv6_prefix: int = Field(64, ge=32, le=128)
    max_session_duration: PositiveDuration = 3600.0


class Config(_Strict):
    """The sections modelled; the loader's others (spool, http, bounces, log) are left out."""

    smtp: Smtp = Smtp()
    api: Api = Api()
    domains: dict[DomainName, Domain] = Field(min_length=1)
    shutdown_timeout: Duration = 15.0
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for index, part in enumerate(loc):
        if (index and loc[index - 1] == "domains") or isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def error_lines(exc: ValidationError) -> list[str]:
    """The errors as the gateway prints them: `key.path: message`, one a line.

    Only the shape is adapted: the key path is written the loader's way, pydantic's "Value error, "
    prefix is dropped, and an enum error gets the value it refused.
    """
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "literal_error":
            message += f" (got {error['input']!r})"
        lines.append(f"{_path(error['loc'])}: {message}")
    return lines


def validate(data: dict[str, Any]) -> Config:
    return Config.model_validate(data)
