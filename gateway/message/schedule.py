"""When a request is sent: quiet hours, and the RFC 4021 headers Deferred-Delivery and Expires.

The platform schedules a request by its `sent_date` (wall-clock `YYYY-MM-DD HH:MM`), so mail that
arrives inside a domain's quiet hours is given the end of the window as its `sent_date`, in the
domain's time zone. Where the domain allows `send_date` headers, Deferred-Delivery is a later
`sent_date` (itself moved out of quiet hours); where it allows `ttl`, Expires (or Expiry-Date,
which Outlook writes) becomes `ttl`, the minutes from when it is sent to when it expires. An
explicit X-Pulse-Send-Date or X-Pulse-TTL wins over all of these.

A timing header that cannot be honoured is refused for good (BadContent, 550 5.6.0), never left
to fail later as a temporary error the sender retries for ever: a date the calendar cannot hold
once moved into the domain's time zone or out of its quiet hours, or a lifetime over MAX_TTL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from gateway.config.model import DomainConfig
from gateway.errors import BadContent

if TYPE_CHECKING:
    from gateway.message.parse import ParsedMessage

SEND_DATE = "%Y-%m-%d %H:%M"
# The longest `ttl` sent, in minutes: the platform keeps trying (or waiting for a status) that
# long. A year is beyond any channel's real validity; past it a value is a mistake, such as an
# Expires in 9999 (4,193,427,060 minutes), and refused rather than cut short silently.
MAX_TTL_DAYS = 365
MAX_TTL = MAX_TTL_DAYS * 24 * 60
_OVER_MAX = f"is over the maximum of {MAX_TTL} minutes ({MAX_TTL_DAYS} days)"
_SHOWN = 60


def ttl_header(value: str) -> str:
    """X-Pulse-TTL as the platform gets it: ASCII digits (str.isdigit takes "²", which int()
    refuses), at least 1 and at most MAX_TTL minutes."""
    if not (value.isascii() and value.isdigit()) or not value.strip("0"):
        raise BadContent(f"X-Pulse-TTL: {_shown(value)} is not a number of minutes")
    digits = value.lstrip("0")
    # The length first: int() refuses more than 4,300 digits, and a 5,000-digit one is over.
    if len(digits) > len(str(MAX_TTL)) or int(digits) > MAX_TTL:
        raise BadContent(f"X-Pulse-TTL: {_shown(value)} {_OVER_MAX}")
    return digits


def send_date_header(value: str) -> str:
    """X-Pulse-Send-Date as written, if it is YYYY-MM-DD HH:MM (its range is checked once the
    domain's time zone is known, in `scheduled`)."""
    try:
        datetime.strptime(value, SEND_DATE)
    except ValueError:
        raise BadContent(f"X-Pulse-Send-Date: {_shown(value)} is not YYYY-MM-DD HH:MM") from None
    return value


def scheduled(
    request: dict[str, str], message: ParsedMessage, domain: DomainConfig, now: float
) -> list[str]:
    """Sets `sent_date` and `ttl` in `request` as the timing headers and quiet hours say;
    returns notes for the log."""
    notes: list[str] = []
    timing = message.timing
    arrived = datetime.fromtimestamp(now, UTC)
    send_at = arrived
    if "sent_date" in request:  # X-Pulse-Send-Date, already checked: as the sender wrote it
        try:
            send_at = _localized(
                datetime.strptime(request["sent_date"], SEND_DATE), domain.timezone
            )
        except OverflowError:
            raise BadContent(
                f"X-Pulse-Send-Date: {_shown(request['sent_date'])} is out of range"
            ) from None
    else:
        deferred_header = ""
        if "send_date" in domain.allow_headers and timing.get("deferred-delivery"):
            deferred_header = timing["deferred-delivery"]
            deferred = _date(deferred_header)
            if deferred is None:
                notes.append(f"Deferred-Delivery {deferred_header[:60]!r} is not a date, ignored")
            elif deferred > arrived:
                send_at = deferred
        try:
            send_at = _out_of_quiet_hours(send_at, timing, domain, notes)
            if send_at > arrived:
                request["sent_date"] = _stamp(send_at, domain.timezone)
        except OverflowError:
            # Only a deferred date can reach the end of the calendar: the arrival cannot.
            raise BadContent(
                f"Deferred-Delivery: {_shown(deferred_header)} is out of range"
            ) from None
    expiry_header = "Expires" if timing.get("expires") else "Expiry-Date"
    expiry = timing.get("expires") or timing.get("expiry-date")
    if "ttl" in domain.allow_headers and expiry and "x-pulse-ttl" not in message.headers:
        expires = _date(expiry)
        if expires is None:
            notes.append(f"{expiry_header} {expiry[:60]!r} is not a date, ignored")
        else:
            minutes = math.ceil((expires - send_at).total_seconds() / 60)
            if minutes > MAX_TTL:
                raise BadContent(f"{expiry_header}: {_shown(expiry.strip())} {_OVER_MAX} away")
            request["ttl"] = str(max(1, minutes))
    return notes


def _out_of_quiet_hours(
    send_at: datetime, timing: Mapping[str, str], domain: DomainConfig, notes: list[str]
) -> datetime:
    quiet = domain.quiet_hours
    if quiet is None or (quiet.urgent_send and urgent(timing)):
        return send_at
    local = _local(send_at, domain.timezone)
    if not quiet.contains(local.time()):
        return send_at
    day = local.date() if local.time() < quiet.end else local.date() + timedelta(1)
    held = _localized(datetime.combine(day, quiet.end), domain.timezone)
    notes.append(
        f"quiet hours: held until {_stamp(held, domain.timezone)} "
        f"{_zone_name(held, domain.timezone)}"
    )
    return held


def urgent(timing: Mapping[str, str]) -> bool:
    """Whether the mail says it is urgent, in any of the ways mail clients say it."""
    return (
        timing.get("x-priority", "").strip().startswith("1")
        or timing.get("importance", "").strip().lower() == "high"
        or timing.get("priority", "").strip().lower() == "urgent"
        or timing.get("x-msmail-priority", "").strip().lower() == "high"
    )


def _date(value: str) -> datetime | None:
    try:
        moment = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    # "-0000" (no known zone) is read as UTC, as RFC 5322 says the time is then in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _local(moment: datetime, zone: ZoneInfo | None) -> datetime:
    return moment.astimezone(zone) if zone is not None else moment.astimezone()


def _localized(wall: datetime, zone: ZoneInfo | None) -> datetime:
    """A wall-clock time of `zone` as an instant; one that a DST change skips (02:30 on the night
    clocks go forward) becomes the time it is then (03:30)."""
    if zone is not None:
        return wall.replace(tzinfo=zone).astimezone(UTC)
    return datetime.fromtimestamp(wall.timestamp(), UTC)


def _stamp(moment: datetime, zone: ZoneInfo | None) -> str:
    local = _local(moment, zone)
    if local.second or local.microsecond:  # never sent before the minute asked for
        local += timedelta(minutes=1)
    return local.strftime(SEND_DATE)


def _zone_name(moment: datetime, zone: ZoneInfo | None) -> str:
    """The zone a _stamp is in, for a log line whose own stamp may be in another: the domain's
    (Europe/Moscow +0300), else the machine's offset."""
    offset = _local(moment, zone).strftime("%z")
    return f"{zone.key} {offset}" if zone is not None else offset


def _shown(value: str) -> str:
    """A header value for a reply: quoted, and cut short (a reply line is not the place for
    5,000 digits)."""
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "…")
