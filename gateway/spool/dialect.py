"""What a backend's statements module (sqlite/sql.py, pg/sql.py) provides: each statement by
name, written in its own dialect, taking its parameters in the order given here. The jobs
(jobs.py, queue_view.py) run them and never see which database they talk to.

Each dialect writes its statements out whole, rather than one being made from the other's text:
they differ in more than placeholders (json_each against arrays and unnest, INDEXED BY, FOR
UPDATE SKIP LOCKED, jsonb, a CTE around RETURNING), and a statement read in one file is one a
reader can check against its plan. What both must mean the same is written once, below: which
states a lease takes and which count as unfinished (the partial indexes' WHERE clauses), and the
state a delivery is shown in.
"""

# Only State members are put into these texts, never a value from outside.

from __future__ import annotations

from typing import Protocol

from gateway.spool.states import LEASABLE, TAKEN_BY_CALLBACK, UNFINISHED, State, StatusClass
from gateway.spool.steps import Job, Query


def in_list(states: tuple[State, ...]) -> str:
    return "(" + ", ".join(f"'{state}'" for state in states) + ")"


LEASABLE_IN = in_list(LEASABLE)  # deliveries_due's WHERE
UNFINISHED_IN = in_list(UNFINISHED)  # deliveries_pending's WHERE
TAKEN_BY_CALLBACK_IN = in_list(TAKEN_BY_CALLBACK)

# A delivery in the state a person asks about (states.SHOWN): sent until the platform's status
# says delivered, failed or unknown.
SHOWN_STATE = (
    f"CASE WHEN d.state = '{State.SENT}' AND d.status_class IN ('{StatusClass.DELIVERED}',"
    f" '{StatusClass.FAILED}', '{StatusClass.UNKNOWN}') THEN d.status_class ELSE d.state END"
)

# The columns of one line of `queue list` and the status page, read by queue_view.line.
LINE_COLUMNS = (
    "d.message_id, d.id, m.received_at, d.recipient, {sent_to} AS sent_to,"
    f" {SHOWN_STATE} AS shown, d.attempts, d.last_error, d.status, d.updated_at"
)


# An attempt's outcome as record_results takes it:
# (delivery_id, state, next_attempt_at, platform_id, last_error).
ResultRow = tuple[int, str, float, str | None, str | None]


class Dialect(Protocol):
    """One backend's statements. Parameters, in order, after each name."""

    BEGIN_WRITE: str
    # until, now, limit -> id, message_id, recipient, request, attempts [, message columns]
    LEASE: str
    # ids (id_list) -> id, received_at, auth_user, texts; None if LEASE returns them itself
    MESSAGES_FOR_LEASE: str | None
    NEXT_DUE: str  # -> due
    RELEASE: str  # now, ids (id_list)
    PURGE: str  # older_than
    MARK_BOUNCES: str  # ids (id_list)
    PENDING_BOUNCES: str  # limit
    SETTLE_BOUNCE: str  # state, delivery_id
    LOCK_DELIVERY: str  # delivery_id: the row held until the commit
    DELIVERY_FOR_STATUS: str  # delivery_id, queue_id -> request, state
    STATUS_SEEN: str  # delivery_id, kind, detail
    STATUS_COUNT: str  # delivery_id, kind -> n
    RECORD_STATUS: str  # status, status_class, now, platform_id, delivery_id
    COUNT_BY_STATE: str  # -> state, n
    COUNT_UNCONFIRMED: str  # -> n
    OLDEST_PENDING: str  # -> received_at
    PROBE_WRITE: str  # value
    SHOW_MESSAGE: str  # queue_id
    SHOW_DELIVERIES: str  # queue_id
    SHOW_EVENTS: str  # delivery_id
    MESSAGE_EXISTS: str  # queue_id
    RETRY_MESSAGE: str  # now, queue_id -> id
    DROP_MESSAGE: str  # queue_id
    # from_id, since, state, queue_id, to, to_number, to_local, limit (queue_view.parameters)
    FIND_DELIVERIES: str
    FIND_UNFINISHED: str
    COUNT_BY_SHOWN_STATE: str  # -> shown, n
    OLDEST_WAITING: str
    SENT_SINCE: str  # since -> n
    RECENT_ERRORS: str  # limit
    META_IF_ABSENT: str  # key, value
    # The console (spool/console.py): parameters as console.find_params gives them
    CONSOLE_FIND: str
    CONSOLE_SUBJECT: str  # queue_id -> subject
    CONSOLE_DAY: str  # id prefix -> domain, shown, reason, n, until, id (of a sent one)
    CONSOLE_ROUTED: str  # id prefix -> message_id, detail
    CONSOLE_REQUESTS: str  # ids (id_list) -> id, recipient, request, texts
    CONSOLE_HOURLY_ACCEPTED: str  # id prefix, start -> hour, n, suppressed, held
    CONSOLE_HOURLY_EVENTS: str  # start -> hour, kind, n
    CONSOLE_DROP: str  # now, reason, queue_id -> id
    CONSOLE_SETTLE: str  # now, queue_id -> id
    CONSOLE_FAILED: str  # since, until, limit (a line's columns)
    CONSOLE_RETRY_FAILED: str  # now, since, until -> id
    CONSOLE_RELEASE: str  # now, queue_id -> id (held ones due now)
    CONSOLE_HELD_SPENDS: str  # queue_id -> id, spend (held ones)
    CONSOLE_SEND_ANYWAY: str  # now, queue_id -> id (held ones queued over their limits)
    META_VALUE: str  # key
    # queue_id, content_type, width, height, size, source, source_size, problem, data (media.py)
    INSERT_MEDIA: str
    READ_MEDIA: str  # queue_id -> content_type, data
    SHOW_MEDIA: str  # queue_id -> every column but data
    # limits (budget.py): a row locked by an upsert that gives its counts, after the one lock
    BUDGET_LOCK: str | None  # taken first (PostgreSQL); None: the one writer needs none
    # JSON [[domain, day], ...], now -> domain, day, messages, parts, held_back, tripped,
    # notified; takes BUDGET_LOCK first (it is the first budget statement of a job that counts)
    BUDGET_DAYS: str
    BUDGET_RECIPIENTS: str  # JSON [[domain, recipient], ...], now -> domain, recipient, times
    SET_BUDGET_DAY: str  # domain, day, messages, parts, held_back, tripped, notified
    SET_BUDGET_RECIPIENTS: str  # JSON [[domain, recipient, times as JSON text], ...], now
    READ_BUDGET_DAY: str  # domain, day -> messages, parts
    READ_BUDGET_RECIPIENT: str  # domain, recipient -> times
    HELD_DUE: str  # now, limit -> id, spend, received_at
    HELD_DUE_NOW: str  # now: every held one due now
    FAIL_HELD: str  # id, last_error, now
    NEXT_HELD: str  # -> due
    RELEASE_HELD: str  # id, now
    HOLD_AGAIN: str  # id, until, last_error, now
    TRIPS_OWED: str  # -> domain, day, tripped, over
    CLAIM_NOTICE: str  # domain, day
    PURGE_BUDGET_DAYS: str  # older_than
    PURGE_BUDGET_RECIPIENTS: str  # older_than

    def id_list(self, ids: list[int] | list[str]) -> object:
        """A list of ids as one parameter."""
        ...

    def insert(
        self,
        messages: list[tuple[object, ...]],
        deliveries: list[tuple[object, ...]],
        events: list[tuple[object, ...]],
    ) -> list[Query]:
        """Messages (id, received_at, mail_from, peer, helo, auth_user, size, raw, texts,
        subject), their deliveries (message_id, recipient, request, state, last_error,
        next_attempt_at, spend, now) and events stored
        with them (now, kind, detail, message_id, recipient: each delivery of the message to
        that recipient gets it)."""
        ...

    def record_results(self, rows: list[ResultRow], now: float) -> Job[set[int]]:
        """Attempts' outcomes, each counting an attempt; gives the ids of the deliveries it
        changed."""
        ...

    def insert_events(self, events: list[tuple[int, float, str, str]]) -> Query:
        """A delivery's history: (delivery id, when, kind, detail)."""
        ...

    # --- retransmissions and repeats (repeats.py) ---------------------------------------------

    RETRANSMISSIONS_OF: str  # keys (id_list) -> key, queue_id, at
    REPEATS_OF: str  # keys (id_list) -> key, sent_id, seen_at
    FORGET_RETRANSMISSIONS: str  # older_than
    FORGET_REPEATS: str  # now
    # queue ids (id_list): what messages a limit refused in this commit had claimed
    UNCLAIM_RETRANSMISSIONS: str
    UNCLAIM_REPEATS: str

    def claim_retransmissions(self, rows: list[tuple[str, str, float]], memory: float) -> Query:
        """Keys (key, queue_id, at), sorted by key, each stored unless one kept less than
        `memory` seconds before it is there -> key of each stored (Fetch.ROWS)."""
        ...

    def note_repeats(self, rows: list[tuple[str, str, float, float]]) -> Query:
        """Texts (key, queue_id, at, window), sorted by key, each stored or, if there, seen
        again at `at` -> key, previous_at (when it was seen before; None if new) and sent_id
        (the one its window began with: kept if `at` is within the window of previous_at,
        else queue_id) (Fetch.ROWS)."""
        ...
