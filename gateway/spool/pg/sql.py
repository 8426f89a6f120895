"""Every statement the PostgreSQL spool runs, by name (the Dialect of dialect.py); the tables
themselves are in schema.py.

Parameters are `$n`, in the order dialect.py gives. Where a statement would take one row per
message or per result, it takes arrays instead and unnest()s them: one round trip for a whole
group commit. A parameter that is only ever compared with NULL is cast, since PostgreSQL cannot
infer its type.
"""

# Only State members and constant clauses are put into these texts, never a value from outside.
# ruff: noqa: S608

from __future__ import annotations

from gateway.spool.dialect import (
    LEASABLE_IN,
    LINE_COLUMNS,
    SHOWN_STATE,
    TAKEN_BY_CALLBACK_IN,
    UNFINISHED_IN,
    ResultRow,
    in_list,
)
from gateway.spool.pg.arrays import columns

# The statements of limits, retransmissions and repeats, and the console live in modules of
# their own; imported whole here, so that this module is the whole Dialect (dialect.py).
from gateway.spool.pg.budget_sql import *  # noqa: F403
from gateway.spool.pg.console_sql import *  # noqa: F403
from gateway.spool.pg.repeats_sql import *  # noqa: F403
from gateway.spool.states import RETRYABLE, BounceState, State, StatusClass
from gateway.spool.steps import Fetch, Job, Query, Row

BEGIN_WRITE = "BEGIN"


def id_list(ids: list[int] | list[str]) -> object:
    return ids


# --- the accept path ---------------------------------------------------------------------------

# Every message a group commit stores in one statement, its deliveries as arrays.
_INSERT = (
    "WITH message AS (INSERT INTO messages (id, received_at, mail_from, peer, helo, auth_user,"
    " size, raw, texts, subject) SELECT * FROM unnest($1::text[], $2::float8[], $3::text[],"
    " $4::text[], $5::text[], $6::text[], $7::int[], $8::bytea[], $9::text[], $10::text[]))"
    " INSERT INTO deliveries (message_id, recipient, request, state, last_error,"
    " next_attempt_at, spend, updated_at)"
    " SELECT message_id, recipient, request, state, last_error, due, spend, at"
    " FROM unnest($11::text[], $12::text[], $13::text[], $14::text[], $15::text[],"
    " $16::float8[], $17::text[], $18::float8[])"
    " AS t(message_id, recipient, request, state, last_error, due, spend, at)"
)
# An event stored with a new message's deliveries (see sqlite/sql.py's).
_INSERT_EVENT_BY_RECIPIENT = (
    "INSERT INTO events (delivery_id, at, kind, detail)"
    " SELECT id, $1, $2, $3 FROM deliveries WHERE message_id = $4 AND recipient = $5"
)


def insert(
    messages: list[tuple[object, ...]],
    deliveries: list[tuple[object, ...]],
    events: list[tuple[object, ...]],
) -> list[Query]:
    queries = [Query(_INSERT, [*columns(messages, 10), *columns(deliveries, 8)])]
    if events:
        queries.append(Query(_INSERT_EVENT_BY_RECIPIENT, events, Fetch.MANY))
    return queries


# --- the delivery path -------------------------------------------------------------------------

# SKIP LOCKED: gateways leasing at once take different rows and never wait on each other. A
# `sending` row is a lease; it is due again only once next_attempt_at, its expiry, has passed.
LEASE = (
    "WITH taken AS ("
    f" UPDATE deliveries SET state = '{State.SENDING}', next_attempt_at = $1, updated_at = $2"
    f" WHERE id IN (SELECT id FROM deliveries WHERE state IN {LEASABLE_IN}"
    "   AND next_attempt_at <= $2 ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)"
    " RETURNING id, message_id, recipient, request, attempts)"
    " SELECT taken.*, m.received_at, m.auth_user, m.texts"
    " FROM taken JOIN messages m ON m.id = taken.message_id"
)
MESSAGES_FOR_LEASE: str | None = None  # LEASE joins them itself
NEXT_DUE = f"SELECT min(next_attempt_at) FROM deliveries WHERE state IN {LEASABLE_IN}"
RELEASE = (
    f"UPDATE deliveries SET state = '{State.QUEUED}', next_attempt_at = $1, updated_at = $1"
    f" WHERE id = ANY($2::bigint[]) AND state = '{State.SENDING}' AND next_attempt_at > $1"
)
# Never over a `sent` one (see sqlite/sql.py's _RECORD_RESULT).
_RECORD_RESULTS = (
    "UPDATE deliveries d SET state = r.state, attempts = d.attempts + 1,"
    " next_attempt_at = r.next_at, platform_id = coalesce(r.platform_id, d.platform_id),"
    " last_error = r.last_error, updated_at = $6"
    " FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::text[], $5::text[])"
    " AS r(id, state, next_at, platform_id, last_error) WHERE d.id = r.id"
    f" AND d.state <> '{State.SENT}' RETURNING d.id"
)


def record_results(rows: list[ResultRow], now: float) -> Job[set[int]]:
    taken: list[Row] = yield Query(_RECORD_RESULTS, [*columns(rows, 5), now], Fetch.ROWS)
    return {int(row["id"]) for row in taken}


_INSERT_EVENTS = (
    "INSERT INTO events (delivery_id, at, kind, detail)"
    " SELECT * FROM unnest($1::bigint[], $2::float8[], $3::text[], $4::text[])"
)


def insert_events(events: list[tuple[int, float, str, str]]) -> Query:
    return Query(_INSERT_EVENTS, columns(events, 4))


PURGE = (
    "DELETE FROM messages WHERE received_at < $1 AND NOT EXISTS (SELECT 1 FROM deliveries d"
    f" WHERE d.message_id = messages.id AND (d.state IN {UNFINISHED_IN} OR d.updated_at >= $1))"
)

# --- bounces -----------------------------------------------------------------------------------

MARK_BOUNCES = (
    f"UPDATE deliveries SET bounce = '{BounceState.PENDING}' WHERE id = ANY($1::bigint[])"
    " AND bounce IS NULL"
    " AND (SELECT mail_from FROM messages WHERE messages.id = deliveries.message_id) != ''"
)
PENDING_BOUNCES = (
    "SELECT d.id AS delivery_id, m.id AS queue_id, m.mail_from, d.recipient, m.received_at,"
    " d.state, coalesce(d.last_error, d.status, '') AS reason, m.raw"
    " FROM deliveries d JOIN messages m ON m.id = d.message_id"
    f" WHERE d.bounce = '{BounceState.PENDING}' ORDER BY d.id LIMIT $1"
)
SETTLE_BOUNCE = "UPDATE deliveries SET bounce = $1 WHERE id = $2"

# --- platform callbacks ------------------------------------------------------------------------

# Two gateways may take callbacks for one delivery at once: the second waits for the first.
LOCK_DELIVERY = "SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE"
DELIVERY_FOR_STATUS = "SELECT request, state FROM deliveries WHERE id = $1 AND message_id = $2"
STATUS_SEEN = "SELECT 1 FROM events WHERE delivery_id = $1 AND kind = $2 AND detail = $3"
STATUS_COUNT = "SELECT count(*) FROM events WHERE delivery_id = $1 AND kind = $2"
RECORD_STATUS = (
    "UPDATE deliveries SET status = $1, status_class = $2, status_at = $3,"
    " platform_id = coalesce(platform_id, nullif($4, '')),"
    f" attempts = attempts + CASE WHEN state = '{State.SENDING}' THEN 1 ELSE 0 END,"
    f" state = CASE WHEN state IN {TAKEN_BY_CALLBACK_IN} THEN '{State.SENT}' ELSE state END,"
    f" last_error = CASE WHEN state IN {TAKEN_BY_CALLBACK_IN} THEN NULL ELSE last_error END"
    " WHERE id = $5"
)

# --- health and metrics ------------------------------------------------------------------------

COUNT_BY_STATE = "SELECT state, count(*) AS n FROM deliveries GROUP BY state"
COUNT_UNCONFIRMED = f"SELECT count(*) FROM deliveries WHERE state = '{State.UNCONFIRMED}'"
# Queue ids begin with their received_at: the least unfinished one is the oldest.
OLDEST_PENDING = (
    "SELECT received_at FROM messages WHERE id = (SELECT min(message_id) FROM deliveries"
    f" WHERE state IN {UNFINISHED_IN})"
)
PROBE_WRITE = (
    "INSERT INTO meta (key, value) VALUES ('health', $1)"
    " ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)

# --- the operator's queue commands -------------------------------------------------------------

SHOW_MESSAGE = (
    "SELECT id, received_at, mail_from, peer, helo, size, texts FROM messages WHERE id = $1"
)
SHOW_DELIVERIES = (
    "SELECT id, recipient, state, attempts, next_attempt_at, platform_id, last_error, request,"
    " status, status_class, status_at, bounce FROM deliveries WHERE message_id = $1 ORDER BY id"
)
SHOW_EVENTS = (
    "SELECT at, kind, detail FROM events WHERE delivery_id = $1 AND kind != 'received'"
    " ORDER BY at, id"
)
MESSAGE_EXISTS = "SELECT 1 FROM messages WHERE id = $1"
RETRY_MESSAGE = (
    f"UPDATE deliveries SET state = '{State.QUEUED}', next_attempt_at = $1, updated_at = $1"
    f" WHERE message_id = $2 AND state IN {in_list(RETRYABLE)} RETURNING id"
)
DROP_MESSAGE = "DELETE FROM messages WHERE id = $1"

# --- finding deliveries, the status page's overview --------------------------------------------

# sent_to as text only when the delivery holds it itself (a long one is an index into texts).
_SENT_TO = (
    "CASE WHEN jsonb_typeof(d.request::jsonb -> 'sent_to') = 'string'"
    " THEN d.request::jsonb ->> 'sent_to' END"
)
_LINE = (
    f"SELECT {LINE_COLUMNS.format(sent_to=_SENT_TO)}"
    " FROM deliveries d JOIN messages m ON m.id = d.message_id"
)
_FILTERS = (
    " AND ($2::float8 IS NULL OR m.received_at >= $2)"
    f" AND ($3::text IS NULL OR {SHOWN_STATE} = $3)"
    " AND ($4::text IS NULL OR d.message_id = $4)"
    f" AND ($5::text IS NULL OR lower(d.recipient) = $5 OR {_SENT_TO} IN ($5, $6::text)"
    " OR lower(d.recipient) LIKE $7::text ESCAPE '\\')"
    " ORDER BY d.message_id DESC, d.id DESC LIMIT $8"
)
FIND_DELIVERIES = _LINE + " WHERE d.message_id >= $1" + _FILTERS
FIND_UNFINISHED = _LINE + f" WHERE d.state IN {UNFINISHED_IN} AND d.message_id >= $1" + _FILTERS
COUNT_BY_SHOWN_STATE = f"SELECT {SHOWN_STATE} AS shown, count(*) AS n FROM deliveries d GROUP BY 1"
OLDEST_WAITING = (
    _LINE + " WHERE d.id = (SELECT id FROM deliveries"
    f" WHERE state IN {UNFINISHED_IN} ORDER BY message_id, id LIMIT 1)"
)
SENT_SINCE = "SELECT count(*) FROM events WHERE kind = 'sent' AND at >= $1"
# (A suppressed delivery's last_error is its reason, not an error.)
RECENT_ERRORS = (
    _LINE + f" WHERE (d.last_error IS NOT NULL AND d.state != '{State.SUPPRESSED}')"
    f" OR d.status_class = '{StatusClass.FAILED}'"
    " ORDER BY d.message_id DESC, d.id DESC LIMIT $1"
)

# --- small values kept for the gateways --------------------------------------------------------

META_IF_ABSENT = "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT(key) DO NOTHING"
META_VALUE = "SELECT value FROM meta WHERE key = $1"

# --- a message's picture (media.py) ------------------------------------------------------------

INSERT_MEDIA = (
    "INSERT INTO media (message_id, content_type, width, height, size, source, source_size,"
    " problem, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
READ_MEDIA = "SELECT content_type, data FROM media WHERE message_id = $1"
SHOW_MEDIA = (
    "SELECT content_type, width, height, size, source, source_size, problem FROM media"
    " WHERE message_id = $1"
)
NOTIFY = "NOTIFY smtp2pulse_due"


def rows_changed(status: str) -> int:
    """The row count from a statement's command tag, such as 'UPDATE 3'."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0  # BEGIN, SAVEPOINT: no count


# Which of these messages a commit whose answer was lost did store (pg/link.py), once the
# server process that ran it is gone (until then its COMMIT may still be under way).
BACKEND_ALIVE = "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)"
STORED_AMONG = "SELECT id FROM messages WHERE id = ANY($1::text[])"
