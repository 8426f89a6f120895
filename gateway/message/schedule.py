"""When a request is sent: quiet hours, and the RFC 4021 headers Deferred-Delivery and Expires.

The platform schedules a request by its `sent_date` (wall-clock `YYYY-MM-DD HH:MM`), so mail that
arrives inside a domain's quiet hours is given the end of the window as its `sent_date`, in the
domain's time zone. Where the domain allows `send_date` headers, Deferred-Delivery is a later
`sent_date` (itself moved out of quiet hours); where it allows `ttl`, Expires (or Expiry-Date,
which Outlook writes) becomes `ttl`, the minutes from when it is sent to when it expires. An
explicit X-Pulse-Send-Date or X-Pulse-TTL wins over all of these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from gateway.config.model import DomainConfig

if TYPE_CHECKING:
    from gateway.message.parse import ParsedMessage

SEND_DATE = "%Y-%m-%d %H:%M"


def scheduled(request: dict[str, str], message: ParsedMessage, domain: DomainConfig,
              now: float) -> list[str]:
    """Sets `sent_date` and `ttl` in `request` as the timing headers and quiet hours say;
    returns notes for the log."""
    notes: list[str] = []
    timing = message.timing
    arrived = datetime.fromtimestamp(now, UTC)
    send_at = arrived
    if "sent_date" in request:   # X-Pulse-Send-Date, already checked: as the sender wrote it
        send_at = _localized(datetime.strptime(request["sent_date"], SEND_DATE), domain.timezone)
    else:
        if "send_date" in domain.allow_headers and timing.get("deferred-delivery"):
            deferred = _date(timing["deferred-delivery"])
            if deferred is None:
                notes.append(f"Deferred-Delivery {timing['deferred-delivery'][:60]!r} is not "
                             f"a date, ignored")
            elif deferred > arrived:
                send_at = deferred
        quiet = domain.quiet_hours
        if quiet is not None and not (quiet.urgent_send and urgent(timing)):
            local = _local(send_at, domain.timezone)
            if quiet.contains(local.time()):
                day = local.date() if local.time() < quiet.end else local.date() + timedelta(1)
                send_at = _localized(datetime.combine(day, quiet.end), domain.timezone)
                notes.append(f"quiet hours: held until {_stamp(send_at, domain.timezone)} "
                             f"{_zone_name(send_at, domain.timezone)}")
        if send_at > arrived:
            request["sent_date"] = _stamp(send_at, domain.timezone)
    expiry = timing.get("expires") or timing.get("expiry-date")
    if "ttl" in domain.allow_headers and expiry and "x-pulse-ttl" not in message.headers:
        expires = _date(expiry)
        if expires is None:
            notes.append(f"Expires {expiry[:60]!r} is not a date, ignored")
        else:
            minutes = math.ceil((expires - send_at).total_seconds() / 60)
            request["ttl"] = str(max(1, minutes))
    return notes


def urgent(timing: Mapping[str, str]) -> bool:
    """Whether the mail says it is urgent, in any of the ways mail clients say it."""
    return (timing.get("x-priority", "").strip().startswith("1")
            or timing.get("importance", "").strip().lower() == "high"
            or timing.get("priority", "").strip().lower() == "urgent"
            or timing.get("x-msmail-priority", "").strip().lower() == "high")


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
    if local.second or local.microsecond:   # never sent before the minute asked for
        local += timedelta(minutes=1)
    return local.strftime(SEND_DATE)


def _zone_name(moment: datetime, zone: ZoneInfo | None) -> str:
    """The zone a _stamp is in, for a log line whose own stamp may be in another: the domain's
    (Europe/Moscow +0300), else the machine's offset."""
    offset = _local(moment, zone).strftime("%z")
    return f"{zone.key} {offset}" if zone is not None else offset
