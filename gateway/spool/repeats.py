"""Retransmissions and repeats, decided in the accept path's group commit (jobs.insert), on
every backend alike.

A retransmission (a delivery whose Fingerprint.retransmission key was accepted in the last
RETRANSMISSION_MEMORY seconds) is not stored again; a message whose every delivery is one is
not stored at all, and is answered with the first one's queue id. A repeat (the same
Fingerprint.text within the domain's repeat_window) is stored suppressed, reason `repeat`.

The window slides: every repeat, suppressed ones included, restarts it. A storm that never
pauses thus sends its text once, and the text is sent again only after a whole window of
silence; a window counted from the one sent would send one SMS per window for as long as the
storm lasts, which is the bill this guards against.

Both are decided inside the commit's transaction, by a statement that takes each key's row:
SQLite has one writer, and on PostgreSQL the upserts' row locks make two gateways' commits
take turns on a key, the second seeing what the first committed. Each statement takes its rows
in key order, so two commits cannot each hold a row the other waits for; and a key that comes
twice in one commit is decided here, in the commit's order, since one PostgreSQL upsert cannot
touch a row twice. A commit whose messages carry no keys runs none of these statements.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from gateway.spool.dialect import Dialect
from gateway.spool.rows import Accepted, NewDelivery, NewMessage, Suppressed
from gateway.spool.steps import Fetch, Job, Query, Row

RETRANSMISSION_MEMORY = 86400.0  # how long a retransmission is recognised (the contract's 24 h)
REPEAT = "repeat"  # the Suppressed reason smtp2pulse_suppressed_total counts


def decide(sql: Dialect, new: list[NewMessage]) -> Job[tuple[list[NewMessage], list[Accepted]]]:
    """The messages to store, with their retransmissions left out and their repeats suppressed,
    and the answer for each of `new`, in order."""
    firsts = yield from _retransmissions(sql, new)
    kept: list[list[NewDelivery]] = [
        [d for d in n.message.deliveries if _key(d) not in firsts.get(n.queue_id, {})] for n in new
    ]
    repeats = yield from _repeats(sql, new, kept)
    stored: list[NewMessage] = []
    answers: list[Accepted] = []
    for n, deliveries in zip(new, kept, strict=True):
        ours = firsts.get(n.queue_id, {})
        retransmitted = tuple(
            (d.recipient, ours[key])
            for d in n.message.deliveries
            if (key := _key(d)) is not None and key in ours
        )
        if not deliveries:
            answers.append(Accepted(retransmitted[0][1], stored=False, retransmitted=retransmitted))
            continue
        suppressed = repeats.get(n.queue_id, {})
        if retransmitted or suppressed:
            deliveries = [
                dataclasses.replace(d, suppressed=suppressed[i]) if i in suppressed else d
                for i, d in enumerate(deliveries)
            ]
            n = dataclasses.replace(
                n, message=dataclasses.replace(n.message, deliveries=tuple(deliveries))
            )
        stored.append(n)
        answers.append(
            Accepted(
                n.queue_id,
                retransmitted=retransmitted,
                suppressed=tuple((deliveries[i].recipient, why) for i, why in suppressed.items()),
            )
        )
    return stored, answers


def _key(delivery: NewDelivery) -> str | None:
    return None if delivery.fingerprint is None else delivery.fingerprint.retransmission


def _retransmissions(sql: Dialect, new: list[NewMessage]) -> Job[dict[str, dict[str, str]]]:
    """For each message (by queue id), its deliveries' keys that are retransmissions, each
    with the queue id of the message first accepted with it."""
    owner: dict[str, tuple[str, float]] = {}  # key -> the first in this commit to bring it
    again: list[tuple[str, str]] = []  # (queue id, key) of the others that bring it
    for n in new:
        for delivery in n.message.deliveries:
            key = _key(delivery)
            if key is None:
                continue
            if key in owner:
                again.append((n.queue_id, key))
            else:
                owner[key] = (n.queue_id, n.now)
    if not owner:
        return {}
    rows = [(key, *owner[key]) for key in sorted(owner)]
    claimed: list[Row] = yield sql.claim_retransmissions(rows, RETRANSMISSION_MEMORY)
    new_keys = {row["key"] for row in claimed}
    earlier: dict[str, str] = {}
    if len(new_keys) < len(owner):
        unclaimed = sorted(set(owner) - new_keys)
        found: list[Row] = yield Query(
            sql.RETRANSMISSIONS_OF, (sql.id_list(unclaimed),), Fetch.ROWS
        )
        earlier = {row["key"]: row["queue_id"] for row in found}
    firsts: dict[str, dict[str, str]] = {}
    for key, (queue_id, _now) in owner.items():
        if key not in new_keys and key in earlier:
            firsts.setdefault(queue_id, {})[key] = earlier[key]
    for queue_id, key in again:
        # A second copy in the same commit: of what the database had, or of the first copy.
        firsts.setdefault(queue_id, {})[key] = earlier.get(key, owner[key][0])
    return firsts


def _repeats(
    sql: Dialect, new: list[NewMessage], kept: list[list[NewDelivery]]
) -> Job[dict[str, dict[int, Suppressed]]]:
    """For each message (by queue id), which of its kept deliveries (by position) are repeats."""
    first: dict[str, tuple[str, float, float]] = {}  # text key -> queue id, now, window
    order: list[tuple[str, int, str]] = []  # (queue id, position, key), in the commit's order
    for n, deliveries in zip(new, kept, strict=True):
        for position, delivery in enumerate(deliveries):
            fingerprint = delivery.fingerprint
            if fingerprint is None or fingerprint.text is None or delivery.suppressed:
                continue
            first.setdefault(fingerprint.text, (n.queue_id, n.now, fingerprint.window))
            order.append((n.queue_id, position, fingerprint.text))
    if not first:
        return {}
    rows = [(key, *first[key]) for key in sorted(first)]
    noted: list[Row] = yield sql.note_repeats(rows)
    # sent_id: the one the window began with; this commit's first copy if the window was over.
    before = {row["key"]: (row["previous_at"], row["sent_id"]) for row in noted}
    decided: set[str] = set()
    repeats: dict[str, dict[int, Suppressed]] = {}
    for queue_id, position, key in order:
        _owner, now, window = first[key]
        previous_at, sent_id = before[key]
        if key not in decided:
            decided.add(key)
            if not _is_repeat(previous_at, now, window):
                continue  # the window was over, or never began: this one is sent
        repeats.setdefault(queue_id, {})[position] = Suppressed(
            REPEAT, f"of {sent_id}: the same text within {_duration(window)}"
        )
    return repeats


def _is_repeat(previous_at: float | None, now: float, window: float) -> bool:
    return previous_at is not None and now - previous_at < window


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# --- the spool's purge, and preview's look ---------------------------------------------------


def unclaim(sql: Dialect, queue_ids: list[str]) -> Job[None]:
    """Give up what messages refused later in the same commit (a limit's 452) claimed: a
    client that sends one again must find it new, neither a retransmission of nor a repeat of
    a message that was never stored. (A repeat window it merely restarted stays restarted.)"""
    yield Query(sql.UNCLAIM_RETRANSMISSIONS, (sql.id_list(queue_ids),))
    yield Query(sql.UNCLAIM_REPEATS, (sql.id_list(queue_ids),))


def forget(sql: Dialect, now: float) -> Job[None]:
    """Keys past their time: retransmissions after a day, repeats once their window is over."""
    yield Query(sql.FORGET_RETRANSMISSIONS, (now - RETRANSMISSION_MEMORY,))
    yield Query(sql.FORGET_REPEATS, (now,))


def foresee(
    sql: Dialect, now: float, deliveries: Sequence[NewDelivery]
) -> Job[list[tuple[str, str] | None]]:
    """What the accept commit would decide now of each delivery, for people (`preview`):
    ("retransmission", of what), ("suppressed", why) or None. Reads only."""
    keys = [_key(d) for d in deliveries]
    texts = [d.fingerprint.text if d.fingerprint else None for d in deliveries]
    earlier: dict[str, Row] = {}
    if any(keys):
        rows: list[Row] = yield Query(
            sql.RETRANSMISSIONS_OF, (sql.id_list(sorted({k for k in keys if k})),), Fetch.ROWS
        )
        earlier = {row["key"]: row for row in rows if row["at"] >= now - RETRANSMISSION_MEMORY}
    seen: dict[str, Row] = {}
    if any(texts):
        rows = yield Query(
            sql.REPEATS_OF, (sql.id_list(sorted({t for t in texts if t})),), Fetch.ROWS
        )
        seen = {row["key"]: row for row in rows}
    verdicts: list[tuple[str, str] | None] = []
    for delivery, key, text in zip(deliveries, keys, texts, strict=True):
        window = delivery.fingerprint.window if delivery.fingerprint else 0.0
        if key is not None and key in earlier:
            first = earlier[key]["queue_id"]
            verdicts.append(("retransmission", f"of {first}: answered 250, not stored again"))
        elif text is not None and text in seen and _is_repeat(seen[text]["seen_at"], now, window):
            why = f"of {seen[text]['sent_id']}: the same text within {_duration(window)}"
            verdicts.append(("suppressed", str(Suppressed(REPEAT, why))))
        else:
            verdicts.append(None)
    return verdicts
