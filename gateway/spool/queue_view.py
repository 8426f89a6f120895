"""The spool as the operator and the monitoring see it, once for every backend: `smtp2pulse
queue`, the status page's search and overview, metrics and health.

Reads run on a reader connection beside the writer, so a long listing never holds up an accept;
a retry or a drop is a write like any other, and a live daemon's worker picks a retried
delivery up on its next look. A delivery is shown in the state a person asks about
(states.SHOWN): `sent` until the platform's status says `delivered`, `failed` or `unknown`.
"""

from __future__ import annotations

from typing import TypeVar

from gateway.spool import media
from gateway.spool.dialect import Dialect
from gateway.spool.packing import load_texts, unpack_request
from gateway.spool.rows import (
    DeliveryDetail,
    DeliveryLine,
    MessageDetail,
    Overview,
    Search,
    SpoolStats,
)
from gateway.spool.states import BounceState, State, StatusClass
from gateway.spool.steps import Fetch, Job, Query, Row

E = TypeVar("E", StatusClass, BounceState)
SENT_WINDOW = 3600.0  # the overview's "sent in the last hour"


def show_message(sql: Dialect, queue_id: str) -> Job[MessageDetail | None]:
    message: Row | None = yield Query(sql.SHOW_MESSAGE, (queue_id,), Fetch.ONE)
    if message is None:
        return None
    texts = load_texts(message["texts"])
    details = []
    deliveries: list[Row] = yield Query(sql.SHOW_DELIVERIES, (queue_id,), Fetch.ROWS)
    for d in deliveries:
        rows: list[Row] = yield Query(sql.SHOW_EVENTS, (d["id"],), Fetch.ROWS)
        # Arrival is the message's own time, not an event row (one insert less a message).
        events = [
            (message["received_at"], "received", ""),
            *((e["at"], e["kind"], e["detail"]) for e in rows),
        ]
        details.append(
            DeliveryDetail(
                id=d["id"],
                recipient=d["recipient"],
                state=State(d["state"]),
                attempts=d["attempts"],
                next_attempt_at=d["next_attempt_at"],
                platform_id=d["platform_id"],
                last_error=d["last_error"],
                request=unpack_request(d["request"], texts),
                status=d["status"],
                status_class=_maybe(StatusClass, d["status_class"]),
                status_at=d["status_at"],
                bounce=_maybe(BounceState, d["bounce"]),
                events=events,
            )
        )
    return MessageDetail(
        queue_id=message["id"],
        received_at=message["received_at"],
        mail_from=message["mail_from"],
        peer=message["peer"],
        helo=message["helo"],
        size=message["size"],
        deliveries=details,
        picture=(yield from media.info(sql, queue_id)),
    )


def _maybe(kind: type[E], value: str | None) -> E | None:
    return None if value is None else kind(value)


def retry_message(sql: Dialect, now: float, queue_id: str) -> Job[int | None]:
    """Make every unfinished or failed delivery of a message due now; None if no such message."""
    if (yield Query(sql.MESSAGE_EXISTS, (queue_id,), Fetch.ONE)) is None:
        return None
    ids = [row["id"] for row in (yield Query(sql.RETRY_MESSAGE, (now, queue_id), Fetch.ROWS))]
    if ids:
        yield sql.insert_events([(i, now, "retry", "requested by operator") for i in ids])
    return len(ids)


def drop_message(sql: Dialect, queue_id: str) -> Job[bool]:
    dropped: int = yield Query(sql.DROP_MESSAGE, (queue_id,))
    return dropped > 0


def stats(sql: Dialect, now: float) -> Job[SpoolStats]:
    counts = {row["state"]: row["n"] for row in (yield Query(sql.COUNT_BY_STATE, (), Fetch.ROWS))}
    oldest = yield Query(sql.OLDEST_PENDING, (), Fetch.VALUE)
    return SpoolStats(counts, 0.0 if oldest is None else max(0.0, now - oldest))


def unconfirmed(sql: Dialect) -> Job[int]:
    count = yield Query(sql.COUNT_UNCONFIRMED, (), Fetch.VALUE)
    return int(count or 0)


def probe_writable(sql: Dialect, now: float) -> Job[None]:
    yield Query(sql.PROBE_WRITE, (str(now),))


def line(row: Row) -> DeliveryLine:
    return DeliveryLine(
        row["message_id"],
        row["id"],
        row["received_at"],
        row["recipient"],
        row["sent_to"] if isinstance(row["sent_to"], str) else None,
        row["shown"],
        row["attempts"],
        row["last_error"],
        row["status"],
        row["updated_at"],
    )


def parameters(search: Search) -> tuple[object, ...]:
    """The FIND statements' parameters. `89001234567@sms.local` as written, `79001234567` or
    `+79001234567` as sent, or a bare local part `89001234567` of any domain; the id prefix of
    --since makes the newest-first scan along queue ids (which begin with their arrival time)
    a range."""
    to = None if search.to is None else search.to.strip().lower()
    local = None
    if to is not None and "@" not in to:
        local = to.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "@%"
    since = search.since
    return (
        "" if since is None else f"{int(since * 1000):011X}",
        since,
        search.state,
        search.queue_id,
        to,
        None if to is None else to.removeprefix("+"),
        local,
        search.limit,
    )


def find_deliveries(sql: Dialect, search: Search) -> Job[list[DeliveryLine]]:
    """The deliveries that match, newest first, at most `search.limit`."""
    statement = sql.FIND_UNFINISHED if search.pending_only else sql.FIND_DELIVERIES
    return [line(row) for row in (yield Query(statement, parameters(search), Fetch.ROWS))]


def overview(sql: Dialect, now: float, errors: int) -> Job[Overview]:
    """Counts by shown state, the oldest delivery still waiting, sends in the last hour and the
    platform errors (refusals, failed attempts, failed statuses) of the newest messages.

    The counts scan the spool, as /metrics does; finished messages leave it after a week."""
    counts = {
        row["shown"]: row["n"] for row in (yield Query(sql.COUNT_BY_SHOWN_STATE, (), Fetch.ROWS))
    }
    oldest: Row | None = yield Query(sql.OLDEST_WAITING, (), Fetch.ONE)
    sent = yield Query(sql.SENT_SINCE, (now - SENT_WINDOW,), Fetch.VALUE)
    failed = yield Query(sql.RECENT_ERRORS, (errors,), Fetch.ROWS)
    return Overview(
        counts,
        None if oldest is None else line(oldest),
        int(sent or 0),
        [line(row) for row in failed],
    )
