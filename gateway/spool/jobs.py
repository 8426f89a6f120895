"""What the spool does, once for every backend: the jobs of the accept and delivery paths, the
bounces owed and the platform's callbacks, each a generator of the dialect's statements
(steps.py) that the backend runs in a group commit (commit.py) or on a reader.

Deliveries are leased the way litequeue does it: leasing moves a row to `sending` and sets
`next_attempt_at` to the lease's end, so a lease nobody finished simply becomes due again.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence

from gateway.errors import LimitReached
from gateway.spool import budget, media, repeats
from gateway.spool.dialect import Dialect, ResultRow
from gateway.spool.packing import load_texts, pack_requests, unpack_request
from gateway.spool.rows import (
    Accepted,
    Delivery,
    IncomingMessage,
    NewMessage,
    PendingBounce,
    Result,
    Suppressed,
)
from gateway.spool.states import (
    TAKEN_BY_CALLBACK,
    BounceState,
    CallbackResult,
    State,
    StatusClass,
)
from gateway.spool.steps import Fetch, Job, Query, Row

STATUS_EVENT = "status"
CONFIRMED = "confirmed by the platform's callback"  # the detail of an unconfirmed one's "sent"


def unstorable(message: IncomingMessage) -> str | None:
    """Why a message cannot be stored as it is, or None. A NUL character is text no PostgreSQL
    column takes (nor jsonb, which the search reads requests as); it is refused before it joins a
    group commit, on every backend alike, so that which mail is taken does not depend on the
    spool and one client's NUL never costs the messages committed beside it."""
    texts = [message.mail_from, message.peer, message.helo, message.auth_user or ""]
    for delivery in message.deliveries:
        texts.append(delivery.recipient)
        texts.extend(delivery.request.keys())
        texts.extend(delivery.request.values())
    return (
        "a NUL character in the envelope or the message's text"
        if any(isinstance(text, str) and "\x00" in text for text in texts)
        else None
    )


# --- the accept path ---------------------------------------------------------------------------


def insert(sql: Dialect, new: list[NewMessage]) -> Job[list[Accepted | LimitReached]]:
    """Store messages and their deliveries, in a few statements for all of them.

    The requests are packed (packing.py) here, in the commit, not by the session that waits for
    the 250: for SQLite that is the writer thread, which holds the GIL between its statements
    anyway (the same work on the event loop measured slower, bench/README)."""
    new, answers = yield from repeats.decide(sql, new)  # retransmissions left out, repeats kept
    # Then the domains' limits, on what is left: held, suppressed or the whole message refused
    # (budget.py); what a route or a repeat suppressed spends nothing.
    verdicts = yield from budget.admit(sql, [(n.now, n.message.deliveries) for n in new])
    messages: list[tuple[object, ...]] = []
    deliveries: list[tuple[object, ...]] = []
    events: dict[tuple[object, ...], None] = {}  # in order, each once
    for n, verdict in zip(new, verdicts, strict=True):
        if isinstance(verdict, LimitReached):
            continue
        n = dataclasses.replace(n, message=dataclasses.replace(n.message, deliveries=verdict))
        texts, requests = pack_requests([delivery.request for delivery in n.message.deliveries])
        messages.append(
            (
                n.queue_id,
                n.now,
                n.message.mail_from,
                n.message.peer,
                n.message.helo,
                n.message.auth_user,
                len(n.message.raw),
                n.message.raw,
                texts,
                n.message.subject,
            )
        )
        for delivery, request in zip(n.message.deliveries, requests, strict=True):
            deliveries.append(
                (n.queue_id, delivery.recipient, request, *delivery.stored(n.now), n.now)
            )
            if delivery.event is not None:
                events.setdefault((n.now, *delivery.event, n.queue_id, delivery.recipient))
    if messages:
        for query in sql.insert(messages, deliveries, list(events)):  # noqa: UP028 - commit.py
            yield query
    refused: dict[str, LimitReached] = {}
    dropped: dict[str, tuple[tuple[str, Suppressed], ...]] = {}
    for n, verdict in zip(new, verdicts, strict=True):
        if isinstance(verdict, LimitReached):
            refused[n.queue_id] = verdict
        else:
            dropped[n.queue_id] = tuple(
                (after.recipient, after.suppressed)
                for before, after in zip(n.message.deliveries, verdict, strict=True)
                if before.suppressed is None and after.suppressed is not None
            )
    yield from media.insert(
        sql, [(n.queue_id, n.message.picture) for n in new if n.queue_id not in refused]
    )
    if refused:
        yield from repeats.unclaim(sql, list(refused))
    # A refused one's error is its result: commit.settle raises it to that caller alone.
    return [
        refused.get(answer) or answer.also_suppressed(dropped.get(answer, ())) for answer in answers
    ]


# --- the delivery path -------------------------------------------------------------------------


def recover(statement: str, now: float) -> Job[int]:
    """Every lease taken back (the SQLite spool's start: one daemon owns it, so a `sending` row
    was left by a process that died mid-attempt; due again now, at least once)."""
    changed: int = yield Query(statement, (now,))
    return changed


def lease(sql: Dialect, now: float, limit: int, lease_seconds: float) -> Job[list[Delivery]]:
    rows: list[Row] = yield Query(sql.LEASE, (now + lease_seconds, now, limit), Fetch.ROWS)
    if not rows:
        return []
    messages: dict[str, Row] = {row["message_id"]: row for row in rows}
    if sql.MESSAGES_FOR_LEASE is not None:
        ids = sorted(messages)
        found: list[Row] = yield Query(sql.MESSAGES_FOR_LEASE, (sql.id_list(ids),), Fetch.ROWS)
        messages = {row["id"]: row for row in found}
    texts = {queue_id: load_texts(row["texts"]) for queue_id, row in messages.items()}
    return [
        Delivery(
            id=row["id"],
            queue_id=row["message_id"],
            recipient=row["recipient"],
            request=unpack_request(row["request"], texts[row["message_id"]]),
            attempts=row["attempts"],
            received_at=messages[row["message_id"]]["received_at"],
            auth_user=messages[row["message_id"]]["auth_user"],
        )
        for row in sorted(rows, key=lambda row: int(row["id"]))
    ]


def next_due(sql: Dialect) -> Job[float | None]:
    due = yield Query(sql.NEXT_DUE, (), Fetch.VALUE)
    return None if due is None else float(due)


def release(sql: Dialect, now: float, delivery_ids: Sequence[int]) -> Job[int]:
    """Leased but not sent (its batch had no free slot): due now, the attempt not counted; only
    while the lease is still ours, as one that ran out may be another's."""
    released: int = yield Query(sql.RELEASE, (now, sql.id_list(list(delivery_ids))))
    return released


def record(sql: Dialect, now: float, results: Sequence[Result]) -> Job[None]:
    """Attempts' outcomes, each with its event, and a bounce owed where one asks for it. A
    delivery an operator dropped while it was being sent is not there any more: skipped."""
    rows: list[ResultRow] = [
        (
            r.delivery_id,
            r.state.value,
            r.next_attempt_at,
            r.platform_id,
            None if r.state == State.SENT else r.detail,
        )
        for r in results
    ]
    taken = yield from sql.record_results(rows, now)
    recorded = [r for r in results if r.delivery_id in taken]
    bounces = [r.delivery_id for r in recorded if r.bounce]
    if bounces:
        yield Query(sql.MARK_BOUNCES, (sql.id_list(bounces),))
    if recorded:
        yield sql.insert_events([(r.delivery_id, now, r.event, r.detail) for r in recorded])


def purge(sql: Dialect, older_than: float, now: float) -> Job[int]:
    purged: int = yield Query(sql.PURGE, (older_than,))
    yield from budget.purge(sql, older_than)
    yield from repeats.forget(sql, now)
    return purged


# --- bounces -----------------------------------------------------------------------------------


def mark_bounce(sql: Dialect, delivery_id: int) -> Job[bool]:
    """Owe the sender one notification for a failed delivery; never a null sender, never twice."""
    marked: int = yield Query(sql.MARK_BOUNCES, (sql.id_list([delivery_id]),))
    return marked > 0


def pending_bounces(sql: Dialect, limit: int) -> Job[list[PendingBounce]]:
    rows: list[Row] = yield Query(sql.PENDING_BOUNCES, (limit,), Fetch.ROWS)
    return [
        PendingBounce(
            delivery_id=row["delivery_id"],
            queue_id=row["queue_id"],
            mail_from=row["mail_from"],
            recipient=row["recipient"],
            received_at=row["received_at"],
            state=State(row["state"]),
            reason=row["reason"],
            raw=bytes(row["raw"]),
        )
        for row in rows
    ]


def settle_bounce(
    sql: Dialect, now: float, delivery_id: int, state: BounceState, detail: str
) -> Job[None]:
    yield Query(sql.SETTLE_BOUNCE, (state.value, delivery_id))
    yield sql.insert_events([(delivery_id, now, f"bounce {state}", detail)])


# --- platform callbacks ------------------------------------------------------------------------


def record_status(
    sql: Dialect,
    clock: Callable[[], float],
    delivery_id: int,
    queue_id: str,
    platform_id: str,
    status: str,
    classify: Callable[[bool], StatusClass],
    max_statuses: int,
) -> Job[tuple[CallbackResult, StatusClass]]:
    """Keep a callback's status on its delivery, once however often it is repeated. A callback
    is the platform's word that it has the message: a delivery still being sent, waiting for a
    retry or unconfirmed is then sent (the attempt in flight counted here: its own outcome is
    not recorded over `sent`)."""
    # Two callbacks for one delivery may reach two gateways at once: the row lock makes the
    # second wait, so "seen before" and "how many" are read after the first is committed.
    yield Query(sql.LOCK_DELIVERY, (delivery_id,))
    row: Row | None = yield Query(sql.DELIVERY_FOR_STATUS, (delivery_id, queue_id), Fetch.ONE)
    if row is None:
        return "unknown", StatusClass.UNKNOWN
    # kannel_status is a delivery's own short field, never one of the message's shared texts.
    meaning = classify(json.loads(row["request"]).get("kannel_status") == "1")
    detail = f"{status} ({meaning})" + (f" platform_id={platform_id}" if platform_id else "")
    if (yield Query(sql.STATUS_SEEN, (delivery_id, STATUS_EVENT, detail), Fetch.ONE)):
        return "repeated", meaning
    count = yield Query(sql.STATUS_COUNT, (delivery_id, STATUS_EVENT), Fetch.VALUE)
    if count is not None and count >= max_statuses:
        return "ignored", meaning  # one signed URL must not fill the spool
    now = clock()
    yield Query(sql.RECORD_STATUS, (status, meaning.value, now, platform_id, delivery_id))
    events = [(delivery_id, now, STATUS_EVENT, detail)]
    if row["state"] in TAKEN_BY_CALLBACK:
        events.insert(0, (delivery_id, now, "sent", CONFIRMED))
    yield sql.insert_events(events)
    return "recorded", meaning


# --- values kept for the gateways --------------------------------------------------------------


def get_or_set(sql: Dialect, key: str, value: str) -> Job[str]:
    """The value kept under `key`, `value` if there was none: one statement decides, so two
    gateways starting at once end up with the same (meta.py: the callback secret)."""
    yield Query(sql.META_IF_ABSENT, (key, value))
    kept = yield Query(sql.META_VALUE, (key,), Fetch.VALUE)
    return str(kept)
