"""What today cost and where it went, for the console: per domain the messages, what was sent
and its SMS parts, what was suppressed and why; the routes that took the most messages; and the
platform's latest errors grouped by kind.

Counted from the spool (the deliveries of messages received since local midnight), not from
/metrics, so a restart forgets nothing. A delivery's SMS parts are those of its text as sent
(gateway.message.cost, as `preview` and /metrics count them); its request never changes, so the
parts are counted once per delivery and kept until the day ends.

Limits (a domain's budget) and `held` deliveries are not known here yet: a state the bill does
not name (such as a future `held`) still gets its own column, and a domain's limit goes in
DomainBill.limit, shown when one is set.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway import shown
from gateway.message.cost import request_segments
from gateway.spool.interface import SpoolInterface
from gateway.spool.rows import DeliveryLine

# Shown states the bill groups into its columns; any other gets a column of its own.
SENT = ("sent", "delivered", "failed", "unknown")  # the platform took it: billed
WAITING = ("queued", "sending", "unconfirmed")
NOT_SENT = ("refused",)
SUPPRESSED = "suppressed"
_NAMED = {*SENT, *WAITING, *NOT_SENT, SUPPRESSED}
CHUNK = 500  # deliveries whose parts are counted per read
MAX_KEPT = 200_000  # parts remembered at most (a day busier than this recounts the rest)


@dataclass
class DomainBill:
    domain: str
    messages: int = 0  # deliveries accepted today, suppressed ones included
    sent: int = 0
    parts: int = 0  # SMS parts of the sent ones; 0 for a domain that is not SMS
    waiting: int = 0
    refused: int = 0
    suppressed: Counter[str] = field(default_factory=Counter)  # by reason
    other: Counter[str] = field(default_factory=Counter)  # states the bill does not name
    limit: str | None = None  # the domain's limit, once limits exist


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
            every.other.update(d.other)
        return every


def midnight(now: float) -> float:
    """Today's start in local time."""
    day = time.localtime(now)
    return time.mktime((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0, 0, 0, -1))


class Biller:
    """Makes the bill, remembering each sent delivery's domain and parts until the day ends."""

    def __init__(self, spool: SpoolInterface) -> None:
        self.spool = spool
        self._day = 0.0
        self._parts: dict[int, tuple[str, int]] = {}  # delivery id -> (domain, SMS parts)

    async def bill(self, now: float) -> Bill:
        since = midnight(now)
        if since != self._day:
            self._day, self._parts = since, {}
        day = await self.spool.console_day(since)
        await self._count([i for i in day.sent if i not in self._parts])
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
            else:
                d.other[row.state] += row.count
        for delivery_id in day.sent:
            domain, parts = self._parts.get(delivery_id, ("", 0))
            if parts:
                of(domain).parts += parts
        others = sorted({state for d in domains.values() for state in d.other})
        routes = sorted(day.routed.items(), key=lambda item: (-item[1], item[0]))
        return Bill(since, sorted(domains.values(), key=lambda d: d.domain), routes, others)

    async def _count(self, ids: list[int]) -> None:
        for start in range(0, len(ids), CHUNK):
            requests = await self.spool.console_requests(ids[start : start + CHUNK])
            for delivery_id, (recipient, request) in requests.items():
                if len(self._parts) < MAX_KEPT:
                    segments = request_segments(request)
                    self._parts[delivery_id] = (
                        recipient.rpartition("@")[2].lower(),
                        segments.parts if segments is not None else 0,
                    )


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
