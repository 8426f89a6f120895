"""The spool as the console (the status page) reads and changes it, once for every backend.

Reads run on a reader beside the writer, as queue_view's do. Every action an operator takes
from the page is written into the history (events) of each delivery it changed, with the
client's address, so the page shows who did what and when; a drop from the page therefore keeps
the message (its deliveries failed with the operator's reason) instead of deleting it as
`queue drop` does, and purging forgets it with the rest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.spool.budget import RELEASED, Ledger
from gateway.spool.dialect import Dialect
from gateway.spool.packing import load_texts, unpack_request
from gateway.spool.queue_view import line
from gateway.spool.rows import DayLimits, DeliveryLine, Spend
from gateway.spool.steps import Fetch, Job, Query, Row

Action = Literal["retry", "drop", "settle", "release"]
HOURS = 24
# Past the last queue id there can be (ids are uppercase hex): the first page's cursor.
NEWEST = "~"


def id_prefix(since: float) -> str:
    """The least queue id of a message received at `since` or later (ids begin with it)."""
    return f"{int(since * 1000):011X}"


@dataclass(frozen=True, slots=True)
class ConsoleSearch:
    text: str | None = None  # a recipient, a queue id, or words of a subject or sender
    state: str | None = None  # one of states.SHOWN
    domain: str | None = None
    before: tuple[str, int] | None = None  # the last line of the page before: (queue id, id)
    limit: int = 50


@dataclass(frozen=True, slots=True)
class FoundLine:
    line: DeliveryLine
    mail_from: str
    subject: str
    picture: bool = False  # the message had a picture (a media row)


@dataclass(frozen=True, slots=True)
class DayCount:
    """How many deliveries of messages received today are to one domain in one state."""

    domain: str
    state: str  # shown state
    # A suppressed one's reason (route | repeat | limit | dropped ...), a held one's limit
    # ("limit messages_per_day 5 reached"), else "".
    reason: str
    count: int
    until: float | None = None  # held ones: the latest of when they are looked at again


@dataclass(frozen=True, slots=True)
class Day:
    counts: list[DayCount]
    # Those the platform took (state sent), id -> domain, for their SMS parts: the same rows,
    # read at the same moment, as the counts of their states.
    sent: dict[int, str]
    routed: dict[str, int]  # route name -> messages it routed


@dataclass(frozen=True, slots=True)
class Hourly:
    """Per hour, oldest first, the hour starting at start + 3600 * index."""

    start: float
    accepted: list[int]
    suppressed: list[int]
    sent: list[int]
    failed: list[int]  # failed or refused attempts' final outcomes
    held: list[int]  # deliveries received in the hour that are held now


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def find_params(search: ConsoleSearch) -> tuple[object, ...]:
    """CONSOLE_FIND's parameters: newest first below the cursor, each filter off when NULL."""
    text = None if not search.text else search.text.strip().lower()
    # A recipient has no space: a text with one is looked for in subjects and senders only.
    to = None if text is None or " " in text else text
    before_queue, before_id = search.before if search.before else (NEWEST, 0)
    return (
        before_queue,
        before_id if search.before else None,
        search.state,
        None if not search.domain else "%@" + _like(search.domain.strip().lower()),
        to,
        None if to is None else to.removeprefix("+"),
        None if to is None or "@" in to else _like(to) + "@%",
        None if text is None else "%" + _like(text) + "%",
        None if text is None else text.upper(),
        search.limit,
    )


def find(sql: Dialect, search: ConsoleSearch) -> Job[list[FoundLine]]:
    rows: list[Row] = yield Query(sql.CONSOLE_FIND, find_params(search), Fetch.ROWS)
    return [
        FoundLine(line(row), row["mail_from"], row["subject"] or "", bool(row["picture"]))
        for row in rows
    ]


def subject(sql: Dialect, queue_id: str) -> Job[str | None]:
    found: Row | None = yield Query(sql.CONSOLE_SUBJECT, (queue_id,), Fetch.ONE)
    return None if found is None else str(found["subject"] or "")


def day(sql: Dialect, since: float) -> Job[Day]:
    prefix = id_prefix(since)
    rows: list[Row] = yield Query(sql.CONSOLE_DAY, (prefix,), Fetch.ROWS)
    routed_rows: list[Row] = yield Query(sql.CONSOLE_ROUTED, (prefix,), Fetch.ROWS)
    routed: dict[str, set[str]] = {}
    for row in routed_rows:
        # "route NAME: dropped" or "route NAME: from via" (message.prepare); a message once.
        name = str(row["detail"]).removeprefix("route ").split(":", 1)[0]
        routed.setdefault(name, set()).add(row["message_id"])
    counts: dict[tuple[str, str, str], DayCount] = {}
    sent: dict[int, str] = {}
    for r in rows:
        if r["id"] is not None:  # one the platform took, counted here with its domain's others
            sent[int(r["id"])] = r["domain"]
        key = (r["domain"], r["shown"], r["reason"] or "")
        until = None if r["until"] is None else float(r["until"])
        known = counts.get(key)
        if known is not None:
            if until is None or (known.until is not None and known.until > until):
                until = known.until
            counts[key] = DayCount(*key, known.count + int(r["n"]), until)
        else:
            counts[key] = DayCount(*key, int(r["n"]), until)
    return Day(list(counts.values()), sent, {name: len(ids) for name, ids in routed.items()})


def requests_of(sql: Dialect, ids: Sequence[int]) -> Job[dict[int, tuple[str, dict[str, str]]]]:
    """The recipient and request (as sent) of these deliveries, for counting SMS parts."""
    if not ids:
        return {}
    rows: list[Row] = yield Query(sql.CONSOLE_REQUESTS, (sql.id_list(list(ids)),), Fetch.ROWS)
    return {
        row["id"]: (row["recipient"], unpack_request(row["request"], load_texts(row["texts"])))
        for row in rows
    }


def hourly(sql: Dialect, now: float) -> Job[Hourly]:
    start = (int(now // 3600) - HOURS + 1) * 3600.0  # the current hour is the last bar
    accepted, suppressed, sent, failed, held = ([0] * HOURS for _ in range(5))
    rows: list[Row] = yield Query(
        sql.CONSOLE_HOURLY_ACCEPTED, (id_prefix(start), start), Fetch.ROWS
    )
    for row in rows:
        if 0 <= row["hour"] < HOURS:
            accepted[row["hour"]] += int(row["n"])
            suppressed[row["hour"]] += int(row["suppressed"])
            held[row["hour"]] += int(row["held"])
    rows = yield Query(sql.CONSOLE_HOURLY_EVENTS, (start,), Fetch.ROWS)
    for row in rows:
        if 0 <= row["hour"] < HOURS:
            (sent if row["kind"] == "sent" else failed)[row["hour"]] += int(row["n"])
    return Hourly(start, accepted, suppressed, sent, failed, held)


def act(sql: Dialect, now: float, action: Action, queue_id: str, who: str) -> Job[int | None]:
    """Retry, drop or settle a message's deliveries; how many changed, None if no such message.
    Each changed delivery's history says what was done, by whom, when."""
    if (yield Query(sql.MESSAGE_EXISTS, (queue_id,), Fetch.ONE)) is None:
        return None
    if action == "retry":
        rows: list[Row] = yield Query(sql.RETRY_MESSAGE, (now, queue_id), Fetch.ROWS)
        kind, detail = "retry", f"requested from the console by {who}"
    elif action == "drop":
        reason = f"dropped from the console by {who}"
        rows = yield Query(sql.CONSOLE_DROP, (now, reason, queue_id), Fetch.ROWS)
        kind, detail = "dropped", reason
    elif action == "release":
        # Due now, still held: the held watch (delivery/held.py) looks at its limits again and
        # sends it only if they have room; a retry never bypasses a limit (see send_anyway).
        rows = yield Query(sql.CONSOLE_RELEASE, (now, queue_id), Fetch.ROWS)
        kind, detail = "release", f"release within its limits requested from the console by {who}"
    else:
        rows = yield Query(sql.CONSOLE_SETTLE, (now, queue_id), Fetch.ROWS)
        kind, detail = "settled", f"settled as sent from the console by {who}"
    ids = [row["id"] for row in rows]
    if ids:
        yield sql.insert_events([(i, now, kind, detail) for i in ids])
    return len(ids)


def failed_between(sql: Dialect, since: float, until: float, limit: int) -> Job[list[DeliveryLine]]:
    rows: list[Row] = yield Query(sql.CONSOLE_FAILED, (since, until, limit), Fetch.ROWS)
    return [line(row) for row in rows]


def retry_failed(sql: Dialect, now: float, since: float, until: float, who: str) -> Job[int]:
    """Every delivery that failed between `since` and `until` due again now (after an outage)."""
    rows: list[Row] = yield Query(sql.CONSOLE_RETRY_FAILED, (now, since, until), Fetch.ROWS)
    ids = [row["id"] for row in rows]
    if ids:
        detail = f"retry of every failed delivery requested from the console by {who}"
        yield sql.insert_events([(i, now, "retry", detail) for i in ids])
    return len(ids)


def send_anyway(
    sql: Dialect, now: float, queue_id: str, who: str, today: Mapping[str, DayLimits]
) -> Job[int | None]:
    """A message's held deliveries queued now over their limits, an operator's explicit choice:
    each spends its domain's budget as a release does (the platform bills it, and the gauges
    and the bill say so), and its history says who sent it over which limit."""
    if (yield Query(sql.MESSAGE_EXISTS, (queue_id,), Fetch.ONE)) is None:
        return None
    held: list[Row] = yield Query(sql.CONSOLE_HELD_SPENDS, (queue_id,), Fetch.ROWS)
    rows: list[Row] = yield Query(sql.CONSOLE_SEND_ANYWAY, (now, queue_id), Fetch.ROWS)
    changed = {row["id"] for row in rows}
    spends: list[Spend] = []
    for row in held:
        if row["id"] not in changed or not row["spend"]:
            continue
        domain, recipient, parts = json.loads(row["spend"])
        limits = today.get(domain)  # None: the domain has no limits any more
        if limits is not None:
            spends.append(Spend(limits, recipient, parts))
    if spends:
        ledger = Ledger()
        yield from ledger.load(sql, spends, now)
        for spend in spends:
            ledger.spend(spend, now)
        yield from ledger.save(sql, now)
    ids = [row["id"] for row in rows]
    if ids:
        detail = f"sent now over its limit from the console by {who}"
        yield sql.insert_events([(i, now, RELEASED, detail) for i in ids])
    return len(ids)
