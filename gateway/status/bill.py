"""What today cost and where it went, for the console: per domain the messages, what was sent
and its SMS parts, what was suppressed and why; the routes that took the most messages; and the
platform's latest errors grouped by kind.

Counted from the spool (the deliveries of messages received since local midnight), not from
/metrics, so a restart forgets nothing. A delivery's SMS parts are those of its text as sent
(gateway.message.cost, as `preview` and /metrics count them); its request never changes, so the
parts are counted once per delivery and kept until the day ends. Sent and SMS parts are counted
from the same rows, read in one statement (spool.console.day): a delivery is in both or in
neither, and a sent SMS has at least one part, so on an SMS domain parts >= sent always.

A domain with `limits` is shown against them with the numbers /metrics' budget gauges show
(smtp2pulse_domain_budget_used, read by the same spool call, `budget_used`, from the spool's
budget counts): those are what the limits decide by, on the domain's own calendar day, so the
page and the gauges cannot disagree. Held deliveries are counted by the limit that holds them,
with the latest time one is looked at again. A state the bill does not name gets its own
column.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway import shown
from gateway.message.cost import request_segments
from gateway.spool.budget import window_text
from gateway.spool.interface import SpoolInterface
from gateway.spool.rows import DayLimits, DeliveryLine

# Shown states the bill groups into its columns; any other gets a column of its own.
# The platform took it: billed, and its SMS parts counted ("failed" here is a sent one whose
# platform status says so; one we gave up on comes as "gave up", in a column of its own).
SENT = ("sent", "delivered", "failed", "unknown")
WAITING = ("queued", "sending", "unconfirmed")
NOT_SENT = ("refused",)
SUPPRESSED = "suppressed"
HELD = "held"
_NAMED = {*SENT, *WAITING, *NOT_SENT, SUPPRESSED, HELD}
CHUNK = 500  # deliveries whose parts are counted per read
MAX_KEPT = 200_000  # parts remembered at most (a day busier than this reads the rest each time)
NEAR = 0.8  # a day's count this share of its limit is near it


@dataclass(frozen=True, slots=True)
class Against:
    """One of a domain's daily counts against its limit, as the budget gauges show it."""

    used: int
    limit: int | None  # None: no such limit (the count is still shown)

    @property
    def level(self) -> str:
        """One of reached, near or "" (the page says it in words, and colours only reached)."""
        if self.limit is None:
            return ""
        if self.used >= self.limit:
            return "reached"
        return "near" if self.used >= NEAR * self.limit else ""


@dataclass(frozen=True, slots=True)
class Budget:
    """A domain's limits and its day's counts against them (gateway.spool.budget)."""

    day: str  # the domain's calendar day the counts are of
    messages: Against
    parts: Against | None  # None: a domain that is no SMS and has no parts limit
    per_recipient: str | None  # the rule, e.g. "3 per 1h"
    over_limit: str  # hold | drop | refuse

    @property
    def level(self) -> str:
        levels = {self.messages.level, self.parts.level if self.parts else ""}
        return "reached" if "reached" in levels else "near" if "near" in levels else ""


def budget(limits: DayLimits, used: tuple[int, int], sms: bool) -> Budget:
    messages, parts = used
    rule = limits.per_recipient
    return Budget(
        limits.day,
        Against(messages, limits.messages_per_day),
        Against(parts, limits.parts_per_day) if sms or limits.parts_per_day else None,
        None if rule is None else f"{rule[0]} per {window_text(rule[1])}",
        limits.over_limit,
    )


@dataclass
class DomainBill:
    domain: str
    messages: int = 0  # deliveries accepted today, suppressed ones included
    sent: int = 0
    parts: int = 0  # SMS parts of the sent ones; 0 for a domain that is not SMS
    waiting: int = 0
    refused: int = 0
    suppressed: Counter[str] = field(default_factory=Counter)  # by reason
    held: Counter[str] = field(default_factory=Counter)  # by the limit that holds them
    held_until: float | None = None  # the latest time a held one is looked at again
    other: Counter[str] = field(default_factory=Counter)  # states the bill does not name
    budget: Budget | None = None  # its limits, for a domain with some


@dataclass(frozen=True, slots=True)
class Bill:
    since: float
    domains: list[DomainBill]
    routes: list[tuple[str, int]]  # most messages first
    other_states: list[str]  # the columns of states the bill does not name

    @property
    def total(self) -> DomainBill:
        every = DomainBill("all domains")
        for d in self.domains:
            every.messages += d.messages
            every.sent += d.sent
            every.parts += d.parts
            every.waiting += d.waiting
            every.refused += d.refused
            every.suppressed.update(d.suppressed)
            every.held.update(d.held)
            if d.held_until is not None:
                every.held_until = max(every.held_until or 0.0, d.held_until)
            every.other.update(d.other)
        return every


def midnight(now: float) -> float:
    """Today's start in local time."""
    day = time.localtime(now)
    return time.mktime((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0, 0, 0, -1))


class Biller:
    """Makes the bill, remembering each sent delivery's SMS parts until the day ends."""

    def __init__(self, spool: SpoolInterface) -> None:
        self.spool = spool
        self._day = 0.0
        self._parts: dict[int, int] = {}  # delivery id -> SMS parts

    async def bill(
        self,
        now: float,
        limits: Mapping[str, DayLimits] | None = None,
        used: Mapping[str, tuple[int, int]] | None = None,
        sms: frozenset[str] = frozenset(),
    ) -> Bill:
        """Today's bill; `limits` (gateway.message.limits.today) and `used` (the spool's
        budget_used of them) put each limited domain against its limits; `sms`: the domains
        whose type sends SMS."""
        since = midnight(now)
        if since != self._day:
            self._day, self._parts = since, {}
        day = await self.spool.console_day(since)
        parts = await self._count(list(day.sent))
        domains: dict[str, DomainBill] = {}

        def of(name: str) -> DomainBill:
            d = domains.get(name)
            if d is None:
                d = domains[name] = DomainBill(name)
            return d

        for row in day.counts:
            d = of(row.domain)
            d.messages += row.count
            if row.state in SENT:
                d.sent += row.count
            elif row.state in WAITING:
                d.waiting += row.count
            elif row.state in NOT_SENT:
                d.refused += row.count
            elif row.state == SUPPRESSED:
                d.suppressed[row.reason or "unknown"] += row.count
            elif row.state == HELD:
                limit = row.reason.removeprefix("limit ").removesuffix(" reached")
                d.held[limit or "?"] += row.count
                if row.until is not None:
                    d.held_until = max(d.held_until or 0.0, row.until)
            else:
                d.other[row.state] += row.count
        for delivery_id, domain in day.sent.items():
            of(domain).parts += parts.get(delivery_id, 0)
        for name, day_limits in (limits or {}).items():
            counted = (used or {}).get(name, (0, 0))
            of(name).budget = budget(day_limits, counted, name in sms)
        others = sorted({state for d in domains.values() for state in d.other})
        routes = sorted(day.routed.items(), key=lambda item: (-item[1], item[0]))
        return Bill(since, sorted(domains.values(), key=lambda d: d.domain), routes, others)

    async def _count(self, ids: list[int]) -> dict[int, int]:
        """The SMS parts of these deliveries (0 for one that is no SMS), remembered or read."""
        parts = {i: self._parts[i] for i in ids if i in self._parts}
        unknown = [i for i in ids if i not in parts]
        for start in range(0, len(unknown), CHUNK):
            requests = await self.spool.console_requests(unknown[start : start + CHUNK])
            for delivery_id, (_, request) in requests.items():
                segments = request_segments(request)
                parts[delivery_id] = segments.parts if segments is not None else 0
                if len(self._parts) < MAX_KEPT:
                    self._parts[delivery_id] = parts[delivery_id]
        return parts


@dataclass(frozen=True, slots=True)
class ErrorKind:
    kind: str  # the error with its numbers and ids blanked out
    count: int
    latest: DeliveryLine  # the newest delivery with it


# Numbers, hex ids and quoted values vary between two errors of one kind.
_VARYING = re.compile(r"\b[0-9A-F]{12,}\b|\d+(\.\d+)?")
_KIND_LENGTH = 120


def error_kinds(lines: Iterable[DeliveryLine]) -> list[ErrorKind]:
    """The errors of these deliveries (newest first) grouped by kind, the commonest first."""
    groups: dict[str, list[DeliveryLine]] = {}
    for line in lines:
        note = shown.platform_note(line)
        kind = _VARYING.sub("#", note)[:_KIND_LENGTH] or "-"
        groups.setdefault(kind, []).append(line)
    kinds = [ErrorKind(kind, len(found), found[0]) for kind, found in groups.items()]
    return sorted(kinds, key=lambda k: (-k.count, -k.latest.updated_at))
