"""What the domains' `limits` allow, counted where the count is true: in the spool, in the same
transaction as the deliveries it admits (the accept path's group commit; a held delivery's
release), so a burst from many connections, or from several gateways on one PostgreSQL
database, is decided against counts nobody else can change meanwhile.

The counts: `budget_days` (a domain's messages and parts on one calendar day of its time zone,
with the first limit that tripped that day and whether its notice is still owed) and
`budget_recipients` (when each message counted against a recipient's `per_recipient` window
was admitted). Each row a job needs is locked first, all in one order (days, then recipients,
each sorted), by an upsert that returns its counts; the job then decides in Python, in batch
order, and writes the counts back. So two transactions that need the same rows take turns and
cannot deadlock, and a limit is never exceeded: the guarantee is exact, not "within what is in
flight". A transaction may run several such rounds (a group commit's accepts, a held one's
release, a notice's claim); each begins with the budget's one lock (`lock`), so rounds of two
gateways never cross.

Budget is spent when a delivery is admitted to be sent: at accept (stored `queued`) or when a
held one is released (gateway.spool.held). Suppressed, refused and held deliveries spend nothing.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence

from gateway.errors import LimitReached
from gateway.spool.dialect import Dialect
from gateway.spool.rows import DayLimits, NewDelivery, Spend, Suppressed
from gateway.spool.steps import Fetch, Job, Query, Row
from gateway.times import local_time

RELEASED = "released"  # the event of a held delivery admitted


@dataclasses.dataclass(slots=True)
class Day:
    messages: int
    parts: int
    held_back: int  # deliveries held, dropped or refused this day
    tripped: str | None  # the first limit that tripped this day
    notified: int  # 0: a notice is owed; 1: sent, or none owed
    changed: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Trip:
    """A limit that tripped on a domain's day, its notice still owed."""

    domain: str
    day: str
    tripped: str
    held_back: int  # how many deliveries a limit held, dropped or refused that day so far


def lock(sql: Dialect) -> Job[None]:
    """The budget's one lock, taken before any budget row in a transaction (PostgreSQL: an
    advisory lock for the transaction; SQLite's one writer needs none). A commit may run
    several budget jobs (accepts, a release, a notice's claim, a purge), each locking rows in
    its own sorted round; two gateways' commits could take those rounds in crossing orders
    and deadlock. Behind the one lock they cannot: whoever holds it holds every row it will
    need next, and the others wait for it holding none. (A job that counts takes it in its
    day statement, BUDGET_DAYS, saving a round trip; the others take it so.)"""
    if sql.BUDGET_LOCK is not None:
        yield Query(sql.BUDGET_LOCK)


def window_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def held_until(what: str, until: float) -> str:
    """A held delivery's last_error: which limit, and until when (queue list shows it)."""
    return f"limit {what} reached; held until {local_time(until)}"


def verdict(spend: Spend, day: Day, times: Sequence[float], now: float) -> tuple[str, float] | None:
    """Which limit one more such delivery would exceed, and when there is room again; None if
    it fits."""
    limits = spend.limits
    over: list[str] = []
    until = 0.0
    if limits.per_recipient is not None:
        count, window = limits.per_recipient
        recent = [at for at in times if at > now - window]
        if len(recent) >= count:
            over.append(f"per_recipient {count}/{window_text(window)}")
            # Room once the oldest of the last `count` leaves the window.
            until = max(until, sorted(recent)[len(recent) - count] + window)
    if limits.messages_per_day is not None and day.messages + 1 > limits.messages_per_day:
        over.append(f"messages_per_day {limits.messages_per_day}")
        until = max(until, limits.day_ends)
    if (
        limits.parts_per_day is not None
        and spend.parts
        and day.parts + spend.parts > limits.parts_per_day
    ):
        over.append(f"parts_per_day {limits.parts_per_day}")
        until = max(until, limits.day_ends)
    return (", ".join(over), until) if over else None


class Ledger:
    """The counts of the rows a job locked, changed in memory and written back by `save`."""

    def __init__(self) -> None:
        self.days: dict[tuple[str, str], Day] = {}
        self.recipients: dict[tuple[str, str], list[float]] = {}
        self.changed: set[tuple[str, str]] = set()

    def load(self, sql: Dialect, spends: Sequence[Spend], now: float) -> Job[None]:
        """Lock and read every row these spends count against (the day statement takes the
        budget's one lock first)."""
        days = sorted({(s.limits.domain, s.limits.day) for s in spends})
        people = sorted(
            {(s.limits.domain, s.recipient) for s in spends if s.limits.per_recipient is not None}
        )
        rows: list[Row] = yield Query(sql.BUDGET_DAYS, (json.dumps(days), now), Fetch.ROWS)
        for row in rows:
            self.days[(row["domain"], row["day"])] = Day(
                row["messages"], row["parts"], row["held_back"], row["tripped"], row["notified"]
            )
        if people:
            found_rows: list[Row] = yield Query(
                sql.BUDGET_RECIPIENTS, (json.dumps(people), now), Fetch.ROWS
            )
            for found in found_rows:
                self.recipients[(found["domain"], found["recipient"])] = json.loads(found["times"])

    def day(self, spend: Spend) -> Day:
        return self.days[(spend.limits.domain, spend.limits.day)]

    def times(self, spend: Spend) -> list[float]:
        return self.recipients.get((spend.limits.domain, spend.recipient), [])

    def check(self, spend: Spend, now: float) -> tuple[str, float] | None:
        return verdict(spend, self.day(spend), self.times(spend), now)

    def spend(self, spend: Spend, now: float, sign: int = 1) -> None:
        """Count (or, with sign -1, take back) one admitted delivery."""
        day = self.day(spend)
        day.messages += sign
        day.parts += sign * spend.parts
        day.changed = True
        if spend.limits.per_recipient is not None:
            key = (spend.limits.domain, spend.recipient)
            window = spend.limits.per_recipient[1]
            times = [at for at in self.recipients[key] if at > now - window]
            if sign > 0:
                times.append(now)
            else:
                times.remove(now)
            self.recipients[key] = times
            self.changed.add(key)

    def trip(self, spend: Spend, what: str) -> None:
        day = self.day(spend)
        day.held_back += 1
        if day.tripped is None:
            day.tripped = what
            day.notified = 0 if spend.limits.notify else 1
        day.changed = True

    def save(self, sql: Dialect, now: float) -> Job[None]:
        days = [
            (*key, d.messages, d.parts, d.held_back, d.tripped, d.notified)
            for key, d in self.days.items()
            if d.changed
        ]
        if days:
            yield Query(sql.SET_BUDGET_DAY, days, Fetch.MANY)
        people = [(*key, json.dumps(self.recipients[key])) for key in sorted(self.changed)]
        if people:
            yield Query(sql.SET_BUDGET_RECIPIENTS, (json.dumps(people), now))


Verdicts = list[tuple[NewDelivery, ...] | LimitReached]


def admit(sql: Dialect, messages: Sequence[tuple[float, tuple[NewDelivery, ...]]]) -> Job[Verdicts]:
    """Each message's deliveries as they are to be stored (within their limits: queued; over
    one: held or suppressed), or the refusal of the whole message when a delivery over a limit
    with over_limit refuse is among them (nothing of it stored, nothing spent)."""
    spends = [d.spend for _, ds in messages for d in ds if d.spend and d.suppressed is None]
    if not spends:
        return [deliveries for _, deliveries in messages]
    ledger = Ledger()
    yield from ledger.load(sql, spends, messages[0][0])
    verdicts: Verdicts = []
    for now, deliveries in messages:
        kept: list[NewDelivery] = []
        spent: list[Spend] = []
        refused: LimitReached | None = None
        for delivery in deliveries:
            spend = delivery.spend
            if spend is None or delivery.suppressed is not None:
                kept.append(delivery)
                continue
            over = ledger.check(spend, now)
            if over is None:
                ledger.spend(spend, now)
                spent.append(spend)
                kept.append(delivery)
                continue
            what, until = over
            ledger.trip(spend, what)
            mode = spend.limits.over_limit
            if mode == "refuse":
                refused = refused or LimitReached(
                    f"{spend.limits.domain}: limit {what} reached, try again after"
                    f" {local_time(until)}"
                )
            elif mode == "drop":
                kept.append(dataclasses.replace(delivery, suppressed=Suppressed("limit", what)))
            else:
                kept.append(dataclasses.replace(delivery, held=(until, held_until(what, until))))
        if refused is not None:
            for spend in reversed(spent):
                ledger.spend(spend, now, -1)
            verdicts.append(refused)
        else:
            verdicts.append(tuple(kept))
    yield from ledger.save(sql, messages[-1][0])
    return verdicts


def count_refusal(sql: Dialect, spend: Spend, now: float) -> Job[Trip | None]:
    """A delivery RCPT refused (over_limit refuse, the count already full): counted as held
    back, and the day's first trip, as a refusal after DATA is. Gives the trip if its notice
    is owed (whoever claims it first sends it)."""
    ledger = Ledger()
    yield from ledger.load(sql, [spend], now)
    over = ledger.check(spend, now)
    if over is None:
        return None  # room again meanwhile: the client's next try will find it
    ledger.trip(spend, over[0])
    yield from ledger.save(sql, now)
    day = ledger.day(spend)
    if day.notified or day.tripped is None:
        return None
    return Trip(spend.limits.domain, spend.limits.day, day.tripped, day.held_back)


# --- what the gateways read: RCPT's check, preview, /metrics, the notices owed -----------------


def over_limit(sql: Dialect, spend: Spend, now: float) -> Job[str | None]:
    """Which limit one more delivery like `spend` would exceed now, read without locking (RCPT's
    cheap check for over_limit refuse, and preview); the commit decides for good."""
    key = (spend.limits.domain, spend.limits.day)
    row: Row | None = yield Query(sql.READ_BUDGET_DAY, key, Fetch.ONE)
    day = Day(row["messages"], row["parts"], 0, None, 1) if row else Day(0, 0, 0, None, 1)
    times: list[float] = []
    if spend.limits.per_recipient is not None:
        text = yield Query(
            sql.READ_BUDGET_RECIPIENT, (spend.limits.domain, spend.recipient), Fetch.VALUE
        )
        times = json.loads(text) if text else []
    over = verdict(spend, day, times, now)
    return None if over is None else f"limit {over[0]} reached until {local_time(over[1])}"


def used(sql: Dialect, today: Mapping[str, DayLimits]) -> Job[dict[str, tuple[int, int]]]:
    """Each domain's messages and parts so far on its day."""
    found: dict[str, tuple[int, int]] = {}
    for domain, limits in sorted(today.items()):
        row: Row | None = yield Query(sql.READ_BUDGET_DAY, (domain, limits.day), Fetch.ONE)
        found[domain] = (row["messages"], row["parts"]) if row else (0, 0)
    return found


def trips(sql: Dialect) -> Job[list[Trip]]:
    rows: list[Row] = yield Query(sql.TRIPS_OWED, (), Fetch.ROWS)
    return [Trip(row["domain"], row["day"], row["tripped"], row["held_back"]) for row in rows]


def claim_notice(sql: Dialect, trip: Trip) -> Job[bool]:
    """Whether this gateway is the one to send the day's notice (once, whoever asks)."""
    yield from lock(sql)
    claimed: int = yield Query(sql.CLAIM_NOTICE, (trip.domain, trip.day))
    return claimed > 0


def purge(sql: Dialect, older_than: float) -> Job[int]:
    """Forget the counts no window or day needs any more."""
    yield from lock(sql)
    days: int = yield Query(sql.PURGE_BUDGET_DAYS, (older_than,))
    people: int = yield Query(sql.PURGE_BUDGET_RECIPIENTS, (older_than,))
    return days + people
