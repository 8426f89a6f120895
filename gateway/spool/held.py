"""Held deliveries (a limit's over_limit hold) looked at again: admitted where their limits
have room now (gateway.spool.budget counts them), held longer where not, failed once they are
older than `spool.give_up_after`, as any delivery not done by then is.

A reload or restart that changes the limits makes every held delivery due at once (`recheck`):
a limit raised or removed, a domain gone, lets them go now, not at the old window's end.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from gateway.spool.budget import Ledger, held_until
from gateway.spool.dialect import Dialect
from gateway.spool.rows import DayLimits, Spend
from gateway.spool.steps import Fetch, Job, Query, Row

RELEASED = "released"  # the event of a held delivery admitted
GAVE_UP = "failed"
GAVE_UP_ERROR = "held by a limit past spool.give_up_after; not sent"


def release(
    sql: Dialect, now: float, today: Mapping[str, DayLimits], limit: int, give_up_after: float
) -> Job[tuple[int, float | None]]:
    """Held deliveries that are due looked at again, oldest first: admitted (queued, budget
    spent) where their limits have room now, else held until they may have room (or until they
    are to be given up on, if that is sooner); failed (no bounce: the limit was the operator's
    word, and a storm's sender would get a storm of bounces) once older than give_up_after.
    Gives how many were admitted and when the next held one is due."""
    rows: list[Row] = yield Query(sql.HELD_DUE, (now, limit), Fetch.ROWS)
    due: list[tuple[int, float, Spend | None]] = []
    for row in rows:
        domain, recipient, parts = json.loads(row["spend"])
        limits = today.get(domain)  # None: the domain has no limits any more
        spend = Spend(limits, recipient, parts) if limits else None
        due.append((row["id"], row["received_at"] + give_up_after, spend))
    spends = [spend for _, _, spend in due if spend is not None]
    ledger = Ledger()
    if spends:
        yield from ledger.load(sql, spends, now)
    admitted: list[tuple[int, float]] = []
    again: list[tuple[int, float, str, float]] = []
    failed: list[tuple[int, str, float]] = []
    for delivery_id, deadline, spend in due:
        if deadline <= now:  # stale by now, whether or not there is room: never sent
            failed.append((delivery_id, GAVE_UP_ERROR, now))
            continue
        over = None if spend is None else ledger.check(spend, now)
        if over is None:
            if spend is not None:
                ledger.spend(spend, now)
            admitted.append((delivery_id, now))
        else:
            what, until = over
            again.append((delivery_id, min(until, deadline), held_until(what, until), now))
    if admitted:
        yield Query(sql.RELEASE_HELD, admitted, Fetch.MANY)
        yield sql.insert_events([(i, now, RELEASED, "within its limits now") for i, _ in admitted])
    if failed:
        yield Query(sql.FAIL_HELD, failed, Fetch.MANY)
        yield sql.insert_events([(i, now, GAVE_UP, GAVE_UP_ERROR) for i, _, _ in failed])
    if again:
        yield Query(sql.HOLD_AGAIN, again, Fetch.MANY)
    yield from ledger.save(sql, now)
    following = yield Query(sql.NEXT_HELD, (), Fetch.VALUE)
    return len(admitted), None if following is None else float(following)


def recheck(sql: Dialect, now: float) -> Job[int]:
    """Every held delivery due now (the limits changed); how many there are."""
    changed: int = yield Query(sql.HELD_DUE_NOW, (now,))
    return changed


def next_held(sql: Dialect) -> Job[float | None]:
    due = yield Query(sql.NEXT_HELD, (), Fetch.VALUE)
    return None if due is None else float(due)
