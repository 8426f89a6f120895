"""Every statement the SQLite spool runs, by name; the schema itself is in schema.py.

States are written into the text from the State enum, not bound as parameters: the partial
indexes (deliveries_due, deliveries_pending) serve only queries whose WHERE is literally theirs.

The statements are written in `?` placeholder style and in SQL that PostgreSQL also runs, so that
a second backend can reuse them by translating placeholders, except for these, which are
SQLite's own: the PRAGMAs, BEGIN IMMEDIATE, MESSAGES_META (json_each; `= ANY(?)` there),
OLDEST_PENDING (INDEXED BY; plain there) and SHOW_EVENTS (rowid breaks ties of `at`).
"""

# Only State members and constant clauses are put into these texts, never a value from outside.
# ruff: noqa: S608

from __future__ import annotations

import functools

from gateway.spool.states import (
    LEASABLE,
    RETRYABLE,
    TAKEN_BY_CALLBACK,
    UNFINISHED,
    BounceState,
    State,
    StatusClass,
)


def _in(states: tuple[State, ...]) -> str:
    return "(" + ", ".join(f"'{state}'" for state in states) + ")"


LEASABLE_IN = _in(LEASABLE)        # deliveries_due's WHERE
UNFINISHED_IN = _in(UNFINISHED)    # deliveries_pending's WHERE

# --- connections -------------------------------------------------------------------------------

JOURNAL_WAL = "PRAGMA journal_mode=WAL"
# FULL (not NORMAL) in WAL mode: a committed row survives power loss, not just a crash.
SYNCHRONOUS_FULL = "PRAGMA synchronous=FULL"
FOREIGN_KEYS_ON = "PRAGMA foreign_keys=ON"
QUERY_ONLY = "PRAGMA query_only=ON"
USER_VERSION = "PRAGMA user_version"
SET_USER_VERSION = "PRAGMA user_version={version:d}"   # a PRAGMA takes no parameters

BEGIN_WRITE = "BEGIN IMMEDIATE"
BEGIN_READ = "BEGIN"   # deferred: one snapshot for all of a read's queries, no lock
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"
SAVEPOINT = "SAVEPOINT job"
ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO job"
RELEASE_SAVEPOINT = "RELEASE job"

# --- the accept path ---------------------------------------------------------------------------

_MESSAGE_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
_DELIVERY_ROW = "(?, ?, ?, ?, ?, ?, ?)"
# One statement for many rows: every statement the writer thread runs makes it wait for the
# GIL again afterwards, behind a busy event loop, and that wait is most of a commit's time.
INSERT_ROWS = 32     # rows per statement at most: a handful of texts in the statement cache


@functools.lru_cache(maxsize=2 * INSERT_ROWS)
def insert_messages(rows: int) -> str:
    return ("INSERT INTO messages (id, received_at, mail_from, peer, helo, auth_user, size, raw,"
            " texts) VALUES " + ", ".join([_MESSAGE_ROW] * rows))


@functools.lru_cache(maxsize=2 * INSERT_ROWS)
def insert_deliveries(rows: int) -> str:
    return ("INSERT INTO deliveries (message_id, recipient, request, state, last_error,"
            " next_attempt_at, updated_at) VALUES " + ", ".join([_DELIVERY_ROW] * rows))


# An event stored with a new message's deliveries (the route it took), found by recipient: the
# insert gives no ids back, and a message's deliveries to one address share the event.
INSERT_EVENT_BY_RECIPIENT = (
    "INSERT INTO events (delivery_id, at, kind, detail)"
    " SELECT id, ?, ?, ? FROM deliveries WHERE message_id = ? AND recipient = ?")

# --- the delivery path -------------------------------------------------------------------------

RECOVER_LEASES = (
    f"UPDATE deliveries SET state = '{State.QUEUED}', next_attempt_at = ?, updated_at = ?"
    f" WHERE state = '{State.SENDING}'")
LEASE = (
    f"UPDATE deliveries SET state = '{State.SENDING}', next_attempt_at = ?, updated_at = ?"
    f" WHERE id IN (SELECT id FROM deliveries WHERE state IN {LEASABLE_IN}"
    "   AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?)"
    " RETURNING id, message_id, recipient, request, attempts")
# The ids come as one JSON array: one statement whatever their number.
MESSAGES_META = (
    "SELECT id, received_at, auth_user, texts FROM messages"
    " WHERE id IN (SELECT value FROM json_each(?))")
NEXT_DUE = (
    "SELECT min(next_attempt_at) AS due FROM deliveries"
    f" WHERE state IN {LEASABLE_IN}")
# Leased here but not sent (the batch they were leased for had no free slot): due again now,
# the attempt not counted. Only while still ours: a lease that ran out may be another's.
RELEASE = (
    f"UPDATE deliveries SET state = '{State.QUEUED}', next_attempt_at = ?, updated_at = ?"
    f" WHERE id IN (SELECT value FROM json_each(?)) AND state = '{State.SENDING}'"
    " AND next_attempt_at > ?")
# Never over a `sent` one: the platform's callback can settle a delivery before its request's
# reply arrives, and a reply that then times out must not make it due again.
RECORD_RESULT = (
    "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_attempt_at = ?,"
    " platform_id = coalesce(?, platform_id), last_error = ?, updated_at = ? WHERE id = ?"
    f" AND state != '{State.SENT}'")
INSERT_EVENT = "INSERT INTO events (delivery_id, at, kind, detail) VALUES (?, ?, ?, ?)"
PURGE = (
    "DELETE FROM messages WHERE received_at < ? AND NOT EXISTS (SELECT 1 FROM deliveries d"
    f" WHERE d.message_id = messages.id AND (d.state IN {UNFINISHED_IN} OR d.updated_at >= ?))")

# --- bounces -----------------------------------------------------------------------------------

MARK_BOUNCE = (
    f"UPDATE deliveries SET bounce = '{BounceState.PENDING}' WHERE id = ? AND bounce IS NULL"
    " AND (SELECT mail_from FROM messages WHERE messages.id = deliveries.message_id) != ''")
PENDING_BOUNCES = (
    "SELECT d.id AS delivery_id, m.id AS queue_id, m.mail_from, d.recipient, m.received_at,"
    " d.state, coalesce(d.last_error, d.status, '') AS reason, m.raw"
    " FROM deliveries d JOIN messages m ON m.id = d.message_id"
    f" WHERE d.bounce = '{BounceState.PENDING}' ORDER BY d.id LIMIT ?")
SETTLE_BOUNCE = "UPDATE deliveries SET bounce = ? WHERE id = ?"

# --- platform callbacks ------------------------------------------------------------------------

# The request is parsed by the caller rather than with json_extract: this way the statement is
# the same in any SQL database.
DELIVERY_FOR_STATUS = (
    "SELECT request, state FROM deliveries WHERE id = ? AND message_id = ?")
STATUS_SEEN = "SELECT 1 FROM events WHERE delivery_id = ? AND kind = ? AND detail = ?"
STATUS_COUNT = "SELECT count(*) AS n FROM events WHERE delivery_id = ? AND kind = ?"
# A callback is the platform's word that it has the message: a delivery still being sent,
# waiting for a retry or unconfirmed is sent (the attempt in flight counted here: its own
# outcome will not be recorded over `sent`).
TAKEN_BY_CALLBACK_IN = _in(TAKEN_BY_CALLBACK)
RECORD_STATUS = (
    "UPDATE deliveries SET status = ?, status_class = ?, status_at = ?,"
    " platform_id = coalesce(platform_id, nullif(?, '')),"
    f" attempts = attempts + CASE WHEN state = '{State.SENDING}' THEN 1 ELSE 0 END,"
    f" state = CASE WHEN state IN {TAKEN_BY_CALLBACK_IN} THEN '{State.SENT}' ELSE state END,"
    f" last_error = CASE WHEN state IN {TAKEN_BY_CALLBACK_IN} THEN NULL ELSE last_error END"
    " WHERE id = ?")

# --- health and metrics ------------------------------------------------------------------------

COUNT_BY_STATE = "SELECT state, count(*) AS n FROM deliveries GROUP BY state"
# Along its own small index: cheap enough for every /healthz.
COUNT_UNCONFIRMED = (
    f"SELECT count(*) AS n FROM deliveries WHERE state = '{State.UNCONFIRMED}'")
# Queue ids begin with their received_at, zero-padded, so the least id of an unfinished delivery
# is the oldest one: one step down the index of unfinished deliveries (named, so that the plan
# does not rest on the planner's guess), not a join over the backlog.
OLDEST_PENDING = (
    "SELECT received_at FROM messages WHERE id = (SELECT min(message_id) FROM deliveries"
    f" INDEXED BY deliveries_pending WHERE state IN {UNFINISHED_IN})")
PROBE_WRITE = (
    "INSERT INTO meta (key, value) VALUES ('health', ?)"
    " ON CONFLICT(key) DO UPDATE SET value = excluded.value")

# --- the operator's queue commands -------------------------------------------------------------

# The oldest messages first, along the index on received_at, and only then their deliveries:
# joining first would sort every delivery in the spool to show `limit`.
_LIST = (
    "SELECT m.id, m.received_at, m.mail_from, d.state, d.recipient"
    " FROM (SELECT id, received_at, mail_from FROM messages m {where}"
    " ORDER BY received_at LIMIT ?) m JOIN deliveries d ON d.message_id = m.id"
    " ORDER BY m.received_at, d.id LIMIT ?")
LIST_ALL = _LIST.format(where="")
LIST_UNFINISHED = _LIST.format(
    where="WHERE EXISTS (SELECT 1 FROM deliveries a WHERE a.message_id = m.id"
          f" AND a.state IN {UNFINISHED_IN})")
SHOW_MESSAGE = (
    "SELECT id, received_at, mail_from, peer, helo, size, texts FROM messages WHERE id = ?")
SHOW_DELIVERIES = (
    "SELECT id, recipient, state, attempts, next_attempt_at, platform_id, last_error, request,"
    " status, status_class, status_at, bounce FROM deliveries WHERE message_id = ? ORDER BY id")
# Arrival is the message's own time, not an event row: one insert less per message. (Spools
# written before that have the row; it is not shown twice.)
SHOW_EVENTS = (
    "SELECT at, kind, detail FROM events WHERE delivery_id = ? AND kind != 'received'"
    " ORDER BY at, rowid")
MESSAGE_EXISTS = "SELECT 1 FROM messages WHERE id = ?"
RETRY_MESSAGE = (
    f"UPDATE deliveries SET state = '{State.QUEUED}', next_attempt_at = ?, updated_at = ?"
    f" WHERE message_id = ? AND state IN {_in(RETRYABLE)} RETURNING id")
DROP_MESSAGE = "DELETE FROM messages WHERE id = ?"

# --- finding deliveries, the status page's overview (search.py) ------------------------------

# A delivery in the state a person asks about: sent until the platform's status says more.
SHOWN_STATE = (
    f"CASE WHEN d.state = '{State.SENT}' AND d.status_class IN ('{StatusClass.DELIVERED}',"
    f" '{StatusClass.FAILED}', '{StatusClass.UNKNOWN}') THEN d.status_class ELSE d.state END")
# The platform's sent_to, short enough to be in the delivery's own JSON (a long one is an index
# into the message's texts, and is then left out: the recipient as written still matches).
_SENT_TO = "json_extract(d.request, '$.sent_to')"
_LINE = (f"SELECT d.message_id, d.id, m.received_at, d.recipient, {_SENT_TO} AS sent_to,"
         f" {SHOWN_STATE} AS shown, d.attempts, d.last_error, d.status, d.updated_at"
         " FROM deliveries d JOIN messages m ON m.id = d.message_id")
# Newest first along the index of deliveries by message (queue ids begin with their arrival
# time): the scan stops at :limit matches, where ordering by time would sort every one, and
# :from_id (the id prefix of --since) makes it a range. Each filter is off when NULL.
_FILTERS = (" AND (:since IS NULL OR m.received_at >= :since)"
            f" AND (:state IS NULL OR {SHOWN_STATE} = :state)"
            " AND (:queue_id IS NULL OR d.message_id = :queue_id)"
            f" AND (:to IS NULL OR lower(d.recipient) = :to OR {_SENT_TO} IN (:to, :to_number)"
            " OR lower(d.recipient) LIKE :to_local ESCAPE '\\')"
            " ORDER BY d.message_id DESC, d.id DESC LIMIT :limit")
FIND_DELIVERIES = _LINE + " WHERE d.message_id >= :from_id" + _FILTERS
FIND_UNFINISHED = (_LINE + f" WHERE d.state IN {UNFINISHED_IN} AND d.message_id >= :from_id"
                   + _FILTERS)
COUNT_BY_SHOWN_STATE = (
    f"SELECT {SHOWN_STATE} AS shown, count(*) AS n FROM deliveries d GROUP BY 1")
# Queue ids begin with their arrival time, so the least unfinished one is the oldest.
OLDEST_WAITING = (
    _LINE + " WHERE d.id = (SELECT id FROM deliveries INDEXED BY deliveries_pending"
    f" WHERE state IN {UNFINISHED_IN} ORDER BY message_id, id LIMIT 1)")
SENT_SINCE = "SELECT count(*) AS n FROM events WHERE kind = 'sent' AND at >= ?"
# (A suppressed delivery's last_error is its reason, not an error.)
RECENT_ERRORS = (
    _LINE + f" WHERE (d.last_error IS NOT NULL AND d.state != '{State.SUPPRESSED}')"
    f" OR d.status_class = '{StatusClass.FAILED}'"
    " ORDER BY d.message_id DESC, d.id DESC LIMIT ?")

# --- small values kept for the gateways (meta.py) --------------------------------------------

META_IF_ABSENT = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING"
META_VALUE = "SELECT value FROM meta WHERE key = ?"
