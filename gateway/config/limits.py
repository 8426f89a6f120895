"""A domain's `limits`: what it may spend, read and checked once at load.

`per_recipient: 10/1h` (at most 10 messages to one recipient in any hour), `messages_per_day`
and, for the SMS types, `parts_per_day` (the domain's calendar day in its `timezone`),
`over_limit` (hold | drop | refuse) and `notify` (an address of a served domain told once a day
when a limit first trips). The counting itself is the spool's (gateway.spool.budget).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway.config import validation as v
from gateway.config.model import DomainConfig, Limits
from gateway.config.recipients import resolve_recipients
from gateway.config.units import parse_duration
from gateway.errors import Refusal

OVER_LIMIT = ("hold", "drop", "refuse")
_KEYS = {"per_recipient", "messages_per_day", "parts_per_day", "over_limit", "notify"}
_PER = re.compile(r"^\s*(\d+)\s*/\s*(\S+)\s*$")
# A recipient's window keeps one timestamp per message counted (gateway.spool.budget), and a held
# delivery is looked at again at least once a window: both stay small with these bounds.
MAX_PER_WINDOW = 10_000
MAX_WINDOW = 86400.0


def per_recipient(value: Any) -> tuple[int, float]:
    """`10/1h` as (10, 3600.0)."""
    match = _PER.match(str(value)) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{value!r} is not COUNT/DURATION (e.g. 10/1h)")
    count = v.integer(1, MAX_PER_WINDOW)(match.group(1))
    window = parse_duration(match.group(2))
    if not 0 < window <= MAX_WINDOW:
        raise ValueError(f"{value!r}: the window must be longer than 0 and at most 1d")
    return count, window


def parse_limits(
    data: dict[str, Any], domain: DomainConfig, path: str, problems: v.Problems, known_type: bool
) -> Limits | None:
    """The domain's `limits`, or None when it has none (every limit off)."""
    here = v.join(path, "limits")
    section = v.section(data, "limits", problems, path)
    if not section:
        return None
    v.keys(section, here, _KEYS, problems)
    limits = Limits(
        per_recipient=v.value(section, "per_recipient", here, per_recipient, None, problems),
        messages_per_day=v.value(section, "messages_per_day", here, v.integer(1), None, problems),
        parts_per_day=v.value(section, "parts_per_day", here, v.integer(1), None, problems),
        over_limit=v.choice(section, "over_limit", here, OVER_LIMIT, "hold", problems),
        notify=v.value(section, "notify", here, _address, None, problems),
    )
    if known_type and limits.parts_per_day is not None and domain.type not in ("sms", "bulk"):
        problems.add(
            f"{here}.parts_per_day", f"only for types bulk, sms (this domain is {domain.type})"
        )
    if limits.per_recipient is None and not limits.messages_per_day and not limits.parts_per_day:
        return None  # nothing to count (over_limit or notify alone say nothing)
    return limits


def _address(value: Any) -> str:
    text = v.text(value).strip()
    if "@" not in text:
        raise ValueError(f"{text!r} is not an address (e.g. duty@sms.local)")
    return text


class _Served:
    def __init__(self, domains: Mapping[str, DomainConfig]) -> None:
        self.domains = domains

    def domain(self, name: str) -> DomainConfig | None:
        return self.domains.get(name.lower())


def check_notify(domains: Mapping[str, DomainConfig], problems: v.Problems) -> None:
    """Each `notify` must reach a served domain: the notice is sent as any message is. It is
    exempt from every limit (and stored with the null sender), so a notice to the very domain
    whose limit tripped is never held, never counted and bounces nowhere: it cannot loop."""
    for name, domain in domains.items():
        if domain.limits is None or domain.limits.notify is None:
            continue
        try:
            resolve_recipients(domain.limits.notify, _Served(domains))
        except Refusal as exc:
            problems.add(f"domains[{name}].limits.notify", f"not an address served here: {exc}")
