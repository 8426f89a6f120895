"""Every statement the SQLite spool runs, by name (the Dialect of dialect.py, and the
connection's own); the tables themselves are in schema.py.

Parameters are numbered (`?1`), in the order dialect.py gives, so one may be used twice.
States are written into the text from the State enum, not bound as parameters: the partial
indexes (deliveries_due, deliveries_pending) serve only queries whose WHERE is literally theirs.
A list of ids is one parameter, a JSON array read with json_each: one statement whatever its
length.
"""

# Only State members and constant clauses are put into these texts, never a value from outside.
# ruff: noqa: S608

from __future__ import annotations

import functools
import json

from gateway.spool.dialect import (
    LEASABLE_IN,
    LINE_COLUMNS,
    SHOWN_STATE,
    TAKEN_BY_CALLBACK_IN,
    UNFINISHED_IN,
    ResultRow,
    in_list,
)

# The statements of limits, retransmissions and repeats, and the console live in modules of
# their own; imported whole here, so that this module is the whole Dialect (dialect.py).
from gateway.spool.sqlite.budget_sql import *  # noqa: F403
from gateway.spool.sqlite.console_sql import *  # noqa: F403
from gateway.spool.sqlite.repeats_sql import *  # noqa: F403
from gateway.spool.states import RETRYABLE, BounceState, State, StatusClass
from gateway.spool.steps import Fetch, Job, Query

# --- connections -------------------------------------------------------------------------------

JOURNAL_WAL = "PRAGMA journal_mode=WAL"
# FULL (not NORMAL) in WAL mode: a committed row survives power loss, not just a crash.
SYNCHRONOUS_FULL = "PRAGMA synchronous=FULL"
FOREIGN_KEYS_ON = "PRAGMA foreign_keys=ON"
QUERY_ONLY = "PRAGMA query_only=ON"
USER_VERSION = "PRAGMA user_version"
SET_USER_VERSION = "PRAGMA user_version={version:d}"  # a PRAGMA takes no parameters

BEGIN_WRITE = "BEGIN IMMEDIATE"
BEGIN_READ = "BEGIN"  # deferred: one snapshot for all of a read's queries, no lock
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"


def id_list(ids: list[int] | list[str]) -> object:
    return json.dumps(ids)


_IDS = "(SELECT value FROM json_each(?{n}))"

# --- the accept path ---------------------------------------------------------------------------

_MESSAGE_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_DELIVERY_ROW = "(?, ?, ?, ?, ?, ?, ?, ?)"
# One statement for many rows: every statement the writer thread runs makes it wait for the
# GIL again afterwards, behind a busy event loop, and that wait is most of a commit's time.
INSERT_ROWS = 32  # rows per statement at most: a handful of texts in the statement cache


@functools.lru_cache(maxsize=2 * INSERT_ROWS)
def insert_messages(rows: int) -> str:
    return (
        "INSERT INTO messages (id, received_at, mail_from, peer, helo, auth_user, size, raw,"
        " texts, subject) VALUES " + ", ".join([_MESSAGE_ROW] * rows)
    )


@functools.lru_cache(maxsize=2 * INSERT_ROWS)
def insert_deliveries(rows: int) -> str:
    return (
        "INSERT INTO deliveries (message_id, recipient, request, state, last_error,"
        " next_attempt_at, spend, updated_at) VALUES " + ", ".join([_DELIVERY_ROW] * rows)
    )


# An event stored with a new message's deliveries (the route it took), found by recipient: the
# insert gives no ids back, and a message's deliveries to one address share the event.
_INSERT_EVENT_BY_RECIPIENT = (
    "INSERT INTO events (delivery_id, at, kind, detail)"
    " SELECT id, ?1, ?2, ?3 FROM deliveries WHERE message_id = ?4 AND recipient = ?5"
)


def insert(
    messages: list[tuple[object, ...]],
    deliveries: list[tuple[object, ...]],
    events: list[tuple[object, ...]],
) -> list[Query]:
    queries = [*_chunks(insert_messages, messages), *_chunks(insert_deliveries, deliveries)]
    if events:
        queries.append(Query(_INSERT_EVENT_BY_RECIPIENT, events, Fetch.MANY))
    return queries


def _chunks(
    statement: functools._lru_cache_wrapper[str], rows: list[tuple[object, ...]]
) -> list[Query]:
    return [
        Query(statement(len(chunk)), [value for row in chunk for value in row])
        for chunk in (
            rows[start : start + INSERT_ROWS] for start in range(0, len(rows), INSERT_ROWS)
        )
    ]


# --- the delivery path -------------------------------------------------------------------------

RECOVER_LEASES = (
    f"UPDATE deliveries SET state = '{State.QUEUED}', next_attempt_at = ?1, updated_at = ?1"
    f" WHERE state = '{State.SENDING}'"
)
# SQLite's RETURNING cannot feed a join: the messages' columns come with MESSAGES_FOR_LEASE.
LEASE = (
    f"UPDATE deliveries SET state = '{State.SENDING}', next_attempt_at = ?1, updated_at = ?2"
    f" WHERE id IN (SELECT id FROM deliveries WHERE state IN {LEASABLE_IN}"
    "   AND next_attempt_at <= ?2 ORDER BY next_attempt_at LIMIT ?3)"
    " RETURNING id, message_id, recipient, request, attempts"
)
MESSAGES_FOR_LEASE: str | None = (
    f"SELECT id, received_at, auth_user, texts FROM messages WHERE id IN {_IDS.format(n=1)}"
)
NEXT_DUE = f"SELECT min(next_attempt_at) FROM deliveries WHERE state IN {LEASABLE_IN}"
RELEASE = (
    f"UPDATE deliveries SET state = '{State.QUEUED}', next_attempt_at = ?1, updated_at = ?1"
    f" WHERE id IN {_IDS.format(n=2)} AND state = '{State.SENDING}' AND next_attempt_at > ?1"
)
# Each outcome its own UPDATE by primary key, to know which took: one dropped by an operator
# while it was being sent is gone, and one the platform's callback settled meanwhile stays sent.
_RECORD_RESULT = (
    "UPDATE deliveries SET state = ?2, attempts = attempts + 1, next_attempt_at = ?3,"
    " platform_id = coalesce(?4, platform_id), last_error = ?5, updated_at = ?6 WHERE id = ?1"
    f" AND state != '{State.SENT}'"
)


def record_results(rows: list[ResultRow], now: float) -> Job[set[int]]:
    taken: set[int] = set()
    for row in rows:
        if (yield Query(_RECORD_RESULT, (*row, now))):
            taken.add(row[0])
    return taken


_INSERT_EVENT = "INSERT INTO events (delivery_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)"


def insert_events(events: list[tuple[int, float, str, str]]) -> Query:
    return Query(_INSERT_EVENT, events, Fetch.MANY)


PURGE = (
    "DELETE FROM messages WHERE received_at < ?1 AND NOT EXISTS (SELECT 1 FROM deliveries d"
    f" WHERE d.message_id = messages.id AND (d.state IN {UNFINISHED_IN} OR d.updated_at >= ?1))"
)

# --- bounces -----------------------------------------------------------------------------------

MARK_BOUNCES = (
    f"UPDATE deliveries SET bounce = '{BounceState.PENDING}' WHERE id IN {_IDS.format(n=1)}"
    " AND bounce IS NULL"
    " AND (SELECT mail_from FROM messages WHERE messages.id = deliveries.message_id) != ''"
)
PENDING_BOUNCES = (
    "SELECT d.id AS delivery_id, m.id AS queue_id, m.mail_from, d.recipient, m.received_at,"
    " d.state, coalesce(d.last_error, d.status, '') AS reason, m.raw"
    " FROM deliveries d JOIN messages m ON m.id = d.message_id"
    f" WHERE d.bounce = '{BounceState.PENDING}' ORDER BY d.id LIMIT ?1"
)
SETTLE_BOUNCE = "UPDATE deliveries SET bounce = ?1 WHERE id = ?2"

# --- platform callbacks ------------------------------------------------------------------------

# One writer: nothing to lock against, only the row to look at.
LOCK_DELIVERY = "SELECT 1 FROM deliveries WHERE id = ?1"
DELIVERY_FOR_STATUS = "SELECT request, state FROM deliveries WHERE id = ?1 AND message_id = ?2"
STATUS_SEEN = "SELECT 1 FROM events WHERE delivery_id = ?1 AND kind = ?2 AND detail = ?3"
STATUS_COUNT = "SELECT count(*) FROM events WHERE delivery_id = ?1 AND kind = ?2"
RECORD_STATUS = (
    "UPDATE deliveries SET status = ?1, status_class = ?2, status_at = ?3,"
    " platform_id = coalesce(platform_id, nullif(?4, '')),"
    f" attempts = attempts + CASE WHEN state = '{State.SENDING}' THEN 1 ELSE 0 END,"
    f" state = CASE WHEN state IN {TAKEN_BY_CALLBACK_IN} THEN '{State.SENT}' ELSE state END,"
    f" last_error = CASE WHEN state IN {TAKEN_BY_CALLBACK_IN} THEN NULL ELSE last_error END"
    " WHERE id = ?5"
)

# --- health and metrics ------------------------------------------------------------------------

COUNT_BY_STATE = "SELECT state, count(*) AS n FROM deliveries GROUP BY state"
# Along its own small index: cheap enough for every /healthz.
COUNT_UNCONFIRMED = f"SELECT count(*) FROM deliveries WHERE state = '{State.UNCONFIRMED}'"
# Queue ids begin with their received_at, zero-padded, so the least id of an unfinished delivery
# is the oldest one: one step down the index of unfinished deliveries (named, so that the plan
# does not rest on the planner's guess), not a join over the backlog.
OLDEST_PENDING = (
    "SELECT received_at FROM messages WHERE id = (SELECT min(message_id) FROM deliveries"
    f" INDEXED BY deliveries_pending WHERE state IN {UNFINISHED_IN})"
)
PROBE_WRITE = (
    "INSERT INTO meta (key, value) VALUES ('health', ?1)"
    " ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)

# --- the operator's queue commands -------------------------------------------------------------

SHOW_MESSAGE = (
    "SELECT id, received_at, mail_from, peer, helo, size, texts FROM messages WHERE id = ?1"
)
SHOW_DELIVERIES = (
    "SELECT id, recipient, state, attempts, next_attempt_at, platform_id, last_error, request,"
    " status, status_class, status_at, bounce FROM deliveries WHERE message_id = ?1 ORDER BY id"
)
# (Spools written before arrival was the message's own time have a 'received' row: not twice.)
SHOW_EVENTS = (
    "SELECT at, kind, detail FROM events WHERE delivery_id = ?1 AND kind != 'received'"
    " ORDER BY at, rowid"
)
MESSAGE_EXISTS = "SELECT 1 FROM messages WHERE id = ?1"
RETRY_MESSAGE = (
    f"UPDATE deliveries SET state = '{State.QUEUED}', next_attempt_at = ?1, updated_at = ?1"
    f" WHERE message_id = ?2 AND state IN {in_list(RETRYABLE)} RETURNING id"
)
DROP_MESSAGE = "DELETE FROM messages WHERE id = ?1"

# --- finding deliveries, the status page's overview --------------------------------------------

# The platform's sent_to, short enough to be in the delivery's own JSON (a long one is an index
# into the message's texts, and is then left out: the recipient as written still matches).
_SENT_TO = "json_extract(d.request, '$.sent_to')"
_LINE = (
    f"SELECT {LINE_COLUMNS.format(sent_to=_SENT_TO)}"
    " FROM deliveries d JOIN messages m ON m.id = d.message_id"
)
# Newest first along the index of deliveries by message (queue ids begin with their arrival
# time): the scan stops at ?8 matches, where ordering by time would sort every one, and ?1
# (the id prefix of --since) makes it a range. Each filter is off when NULL.
_FILTERS = (
    " AND (?2 IS NULL OR m.received_at >= ?2)"
    f" AND (?3 IS NULL OR {SHOWN_STATE} = ?3)"
    " AND (?4 IS NULL OR d.message_id = ?4)"
    f" AND (?5 IS NULL OR lower(d.recipient) = ?5 OR {_SENT_TO} IN (?5, ?6)"
    " OR lower(d.recipient) LIKE ?7 ESCAPE '\\')"
    " ORDER BY d.message_id DESC, d.id DESC LIMIT ?8"
)
FIND_DELIVERIES = _LINE + " WHERE d.message_id >= ?1" + _FILTERS
FIND_UNFINISHED = _LINE + f" WHERE d.state IN {UNFINISHED_IN} AND d.message_id >= ?1" + _FILTERS
COUNT_BY_SHOWN_STATE = f"SELECT {SHOWN_STATE} AS shown, count(*) AS n FROM deliveries d GROUP BY 1"
# Queue ids begin with their arrival time, so the least unfinished one is the oldest.
OLDEST_WAITING = (
    _LINE + " WHERE d.id = (SELECT id FROM deliveries INDEXED BY deliveries_pending"
    f" WHERE state IN {UNFINISHED_IN} ORDER BY message_id, id LIMIT 1)"
)
SENT_SINCE = "SELECT count(*) FROM events WHERE kind = 'sent' AND at >= ?1"
# (A suppressed delivery's last_error is its reason, not an error.)
RECENT_ERRORS = (
    _LINE + f" WHERE (d.last_error IS NOT NULL AND d.state != '{State.SUPPRESSED}')"
    f" OR d.status_class = '{StatusClass.FAILED}'"
    " ORDER BY d.message_id DESC, d.id DESC LIMIT ?1"
)

# --- small values kept for the gateways --------------------------------------------------------

META_IF_ABSENT = "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO NOTHING"
META_VALUE = "SELECT value FROM meta WHERE key = ?1"

# --- a message's picture (media.py) ------------------------------------------------------------

INSERT_MEDIA = (
    "INSERT INTO media (message_id, content_type, width, height, size, source, source_size,"
    " problem, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
)
READ_MEDIA = "SELECT content_type, data FROM media WHERE message_id = ?1"
SHOW_MEDIA = (
    "SELECT content_type, width, height, size, source, source_size, problem FROM media"
    " WHERE message_id = ?1"
)
