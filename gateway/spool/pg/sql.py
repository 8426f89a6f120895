"""The PostgreSQL spool's statements: the SQLite spool's own (gateway/spool/sql.py), with `$n`
for `?`, and a PostgreSQL text where the two dialects differ."""

# Only State members and constant clauses are put into these texts, never a value from outside.
# ruff: noqa: S608

from __future__ import annotations

import re

from gateway.spool import sql as lite
from gateway.spool.states import State


def numbered(statement: str) -> str:
    """`?` placeholders as PostgreSQL's `$1`, `$2`, … (the SQLite texts hold no literal `?`)."""
    count = iter(range(1, statement.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(count)}", statement)


LEASABLE_IN = lite.LEASABLE_IN
UNFINISHED_IN = lite.UNFINISHED_IN

# One statement for every message a group commit stores, its deliveries as arrays: one round
# trip for all of them, where a statement per message (or per recipient) would cost one each.
ACCEPT = (
    "WITH message AS (INSERT INTO messages (id, received_at, mail_from, peer, helo, auth_user,"
    " size, raw, texts) SELECT * FROM unnest($1::text[], $2::float8[], $3::text[], $4::text[],"
    " $5::text[], $6::text[], $7::int[], $8::bytea[], $9::text[]))"
    " INSERT INTO deliveries (message_id, recipient, request, state, last_error,"
    " next_attempt_at, updated_at)"
    " SELECT message_id, recipient, request, state, last_error, at, at"
    " FROM unnest($10::text[], $11::text[], $12::text[], $13::text[], $14::text[],"
    " $15::float8[]) AS t(message_id, recipient, request, state, last_error, at)")
INSERT_EVENT_BY_RECIPIENT = numbered(lite.INSERT_EVENT_BY_RECIPIENT)
# SKIP LOCKED: gateways leasing at once take different rows and never wait on each other. A
# `sending` row is a lease; it is due again only once next_attempt_at, its expiry, has passed.
LEASE = (
    "WITH taken AS ("
    f" UPDATE deliveries SET state = '{State.SENDING}', next_attempt_at = $1, updated_at = $2"
    f" WHERE id IN (SELECT id FROM deliveries WHERE state IN {LEASABLE_IN}"
    "   AND next_attempt_at <= $2 ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)"
    " RETURNING id, message_id, recipient, request, attempts)"
    " SELECT taken.*, m.received_at, m.auth_user, m.texts"
    " FROM taken JOIN messages m ON m.id = taken.message_id ORDER BY taken.id")
NEXT_DUE = numbered(lite.NEXT_DUE)
RELEASE = (
    f"UPDATE deliveries SET state = '{State.QUEUED}', next_attempt_at = $1, updated_at = $1"
    f" WHERE id = ANY($2::bigint[]) AND state = '{State.SENDING}' AND next_attempt_at > $1")
# A batch's outcomes in one statement each, their values as arrays (as ACCEPT): one round trip
# for a hundred results, not three a result.
RECORD_RESULTS = (
    "UPDATE deliveries d SET state = r.state, attempts = d.attempts + 1,"
    " next_attempt_at = r.next_at, platform_id = coalesce(r.platform_id, d.platform_id),"
    " last_error = r.last_error, updated_at = $6"
    " FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::text[], $5::text[])"
    " AS r(id, state, next_at, platform_id, last_error) WHERE d.id = r.id"
    f" AND d.state <> '{State.SENT}' RETURNING d.id")
INSERT_EVENT = numbered(lite.INSERT_EVENT)
INSERT_EVENTS = (
    "INSERT INTO events (delivery_id, at, kind, detail)"
    " SELECT id, $2, kind, detail FROM unnest($1::bigint[], $3::text[], $4::text[])"
    " AS t(id, kind, detail)")
MARK_BOUNCES = lite.MARK_BOUNCE.replace("WHERE id = ?", "WHERE id = ANY($1::bigint[])")
PURGE = numbered(lite.PURGE)
MARK_BOUNCE = numbered(lite.MARK_BOUNCE)
PENDING_BOUNCES = numbered(lite.PENDING_BOUNCES)
SETTLE_BOUNCE = numbered(lite.SETTLE_BOUNCE)
DELIVERY_FOR_STATUS = (
    "SELECT coalesce((request::jsonb ->> 'kannel_status') = '1', false) AS kannel, state"
    " FROM deliveries WHERE id = $1 AND message_id = $2")
STATUS_SEEN = numbered(lite.STATUS_SEEN)
STATUS_COUNT = numbered(lite.STATUS_COUNT)
RECORD_STATUS = numbered(lite.RECORD_STATUS)
# Two callbacks for one delivery may reach two gateways at once: the row lock makes the
# second wait, so "seen before" and "how many" are read after the first is committed.
LOCK_DELIVERY = "SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE"
COUNT_BY_STATE = lite.COUNT_BY_STATE
COUNT_UNCONFIRMED = lite.COUNT_UNCONFIRMED
OLDEST_PENDING = (
    "SELECT received_at FROM messages WHERE id = (SELECT min(message_id) FROM deliveries"
    f" WHERE state IN {UNFINISHED_IN})")
PROBE_WRITE = numbered(lite.PROBE_WRITE)
LIST_ALL = numbered(lite.LIST_ALL)
LIST_UNFINISHED = numbered(lite.LIST_UNFINISHED)
SHOW_MESSAGE = numbered(lite.SHOW_MESSAGE)
SHOW_DELIVERIES = numbered(lite.SHOW_DELIVERIES)
SHOW_EVENTS = numbered(lite.SHOW_EVENTS).replace("rowid", "id")
MESSAGE_EXISTS = numbered(lite.MESSAGE_EXISTS)
RETRY_MESSAGE = numbered(lite.RETRY_MESSAGE)
DROP_MESSAGE = numbered(lite.DROP_MESSAGE)

# --- finding deliveries, the status page's overview --------------------------------------------

# sent_to as text only when the delivery holds it itself (a long one is an index into texts).
_SENT_TO = ("CASE WHEN jsonb_typeof(d.request::jsonb -> 'sent_to') = 'string'"
            " THEN d.request::jsonb ->> 'sent_to' END")
_LINE = (f"SELECT d.message_id, d.id, m.received_at, d.recipient, {_SENT_TO} AS sent_to,"
         f" {lite.SHOWN_STATE} AS shown, d.attempts, d.last_error, d.status, d.updated_at"
         " FROM deliveries d JOIN messages m ON m.id = d.message_id")
# The SQLite text's named filters, by number and typed: PostgreSQL cannot infer the type of a
# parameter that is only compared with NULL. $1 from_id, $2 since, $3 state, $4 queue_id,
# $5 to, $6 to_number, $7 to_local, $8 limit.
_FILTERS = (" AND ($2::float8 IS NULL OR m.received_at >= $2)"
            f" AND ($3::text IS NULL OR {lite.SHOWN_STATE} = $3)"
            " AND ($4::text IS NULL OR d.message_id = $4)"
            f" AND ($5::text IS NULL OR lower(d.recipient) = $5 OR {_SENT_TO} IN ($5, $6::text)"
            " OR lower(d.recipient) LIKE $7::text ESCAPE '\\')"
            " ORDER BY d.message_id DESC, d.id DESC LIMIT $8")
FIND_PARAMETERS = ("from_id", "since", "state", "queue_id", "to", "to_number", "to_local",
                   "limit")
FIND_DELIVERIES = _LINE + " WHERE d.message_id >= $1" + _FILTERS
FIND_UNFINISHED = _LINE + f" WHERE d.state IN {UNFINISHED_IN} AND d.message_id >= $1" + _FILTERS
COUNT_BY_SHOWN_STATE = lite.COUNT_BY_SHOWN_STATE
OLDEST_WAITING = (
    _LINE + " WHERE d.id = (SELECT id FROM deliveries"
    f" WHERE state IN {UNFINISHED_IN} ORDER BY message_id, id LIMIT 1)")
SENT_SINCE = numbered(lite.SENT_SINCE)
RECENT_ERRORS = numbered(_LINE + lite.RECENT_ERRORS.split(" FROM deliveries d JOIN messages m"
                                                          " ON m.id = d.message_id", 1)[1])

# --- small values kept for the gateways --------------------------------------------------------

META_IF_ABSENT = numbered(lite.META_IF_ABSENT)
META_VALUE = numbered(lite.META_VALUE)


def rows_changed(status: str) -> int:
    """The row count from a statement's command tag, such as 'UPDATE 3'."""
    return int(status.rsplit(" ", 1)[-1])
