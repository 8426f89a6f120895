"""A domain's `limits` as the spool counts them: the calendar day of the domain's `timezone` a
moment falls on and when that day ends, and what one request costs (its SMS parts, counted as
`max_parts` counts them). Worked out here, above the spool, so that the spool only counts.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping

from gateway.config.model import Config, DomainConfig
from gateway.message.cost import request_segments
from gateway.spool import DayLimits, Spend


def day_limits(domain: DomainConfig, now: float) -> DayLimits | None:
    """The domain's limits on the day `now` falls on in its time zone; None: it has none."""
    limits = domain.limits
    if limits is None:
        return None
    zone = domain.timezone
    moment = datetime.datetime.fromtimestamp(now, zone)  # None: the local time, naive
    tomorrow = moment.date() + datetime.timedelta(days=1)
    # A naive midnight is the machine's local time, as `timezone` unset means.
    midnight = datetime.datetime.combine(tomorrow, datetime.time(0), tzinfo=zone)
    return DayLimits(
        domain=domain.name,
        day=moment.date().isoformat(),
        day_ends=midnight.timestamp(),
        per_recipient=limits.per_recipient,
        messages_per_day=limits.messages_per_day,
        parts_per_day=limits.parts_per_day,
        over_limit=limits.over_limit,
        notify=limits.notify is not None,
    )


def today(config: Config, now: float) -> Mapping[str, DayLimits]:
    """Every domain with limits, on its own day."""
    found = {name: day_limits(domain, now) for name, domain in config.domains.items()}
    return {name: limits for name, limits in found.items() if limits is not None}


def spend(
    domain: DomainConfig, sent_to: str, request: Mapping[str, str], now: float
) -> Spend | None:
    """What a request to `sent_to` costs the domain's limits; None for a domain without."""
    limits = day_limits(domain, now)
    if limits is None:
        return None
    counted = request_segments(request)
    return Spend(limits, sent_to, counted.parts if counted is not None else 0)


def probe(domain: DomainConfig, sent_to: str, now: float) -> Spend | None:
    """A delivery of the smallest cost (one part, for an SMS type) to `sent_to`: what RCPT
    asks the count about before the text is known."""
    limits = day_limits(domain, now)
    if limits is None:
        return None
    return Spend(limits, sent_to, 1 if domain.type in ("sms", "bulk") else 0)
