"""The console's statements for the PostgreSQL spool (spool/console.py's jobs; part of
sql.py's Dialect, which names them)."""

# Only State members and constant clauses are put into these texts, never a value from outside.
# ruff: noqa: S608

from __future__ import annotations

from gateway.spool.dialect import LINE_COLUMNS, SHOWN_STATE
from gateway.spool.states import State

# (As sql.py's: a delivery's sent_to, and one line of a listing.)
_SENT_TO = (
    "CASE WHEN jsonb_typeof(d.request::jsonb -> 'sent_to') = 'string'"
    " THEN d.request::jsonb ->> 'sent_to' END"
)
_PICTURE = "EXISTS (SELECT 1 FROM media x WHERE x.message_id = m.id) AS picture"
_HELD_UNTIL = f"max(CASE WHEN d.state = '{State.HELD}' THEN d.next_attempt_at END)"
_LINE = (
    f"SELECT {LINE_COLUMNS.format(sent_to=_SENT_TO)}"
    " FROM deliveries d JOIN messages m ON m.id = d.message_id"
)

# (See sqlite/sql.py's: newest first below the page's cursor, a range along the index.)
CONSOLE_FIND = (
    f"SELECT {LINE_COLUMNS.format(sent_to=_SENT_TO)}, m.mail_from, m.subject, {_PICTURE}"
    " FROM deliveries d JOIN messages m ON m.id = d.message_id"
    " WHERE d.message_id <= $1::text"
    " AND ($2::bigint IS NULL OR d.message_id < $1::text OR d.id < $2::bigint)"
    f" AND ($3::text IS NULL OR {SHOWN_STATE} = $3)"
    " AND ($4::text IS NULL OR lower(d.recipient) LIKE $4 ESCAPE '\\')"
    " AND ($8::text IS NULL OR d.message_id = $9::text OR lower(m.subject) LIKE $8 ESCAPE '\\'"
    " OR lower(m.mail_from) LIKE $8 ESCAPE '\\' OR ($5::text IS NOT NULL AND"
    f" (lower(d.recipient) = $5 OR lower(d.recipient) LIKE $7::text ESCAPE '\\'"
    f" OR {_SENT_TO} IN ($5, $6::text))))"
    " ORDER BY d.message_id DESC, d.id DESC LIMIT $10"
)
CONSOLE_SUBJECT = "SELECT subject FROM messages WHERE id = $1"
_DOMAIN = "lower(split_part(d.recipient, '@', 2))"
# Today's deliveries counted by domain, shown state and reason (a few rows, not thousands),
# but for those the platform took (state sent): a row each with its id, for its SMS parts.
# One statement, so one snapshot (a PostgreSQL reader runs each statement in its own): the
# bill's sent and SMS parts are counted from the same rows at one moment.
CONSOLE_DAY = (
    f"SELECT {_DOMAIN} AS domain,"
    # A delivery given up on (state failed) was never taken by the platform: not shown as the
    # "failed" a platform status makes of a sent one, which the bill counts as sent and billed.
    f" CASE WHEN d.state = '{State.FAILED}' THEN 'gave up' ELSE {SHOWN_STATE} END AS shown,"
    f" CASE WHEN d.state = '{State.SUPPRESSED}'"
    " THEN split_part(d.last_error, ' ', 1)"
    f" WHEN d.state = '{State.HELD}' THEN split_part(d.last_error, ';', 1)"
    f" ELSE '' END AS reason, count(*) AS n, {_HELD_UNTIL} AS until,"
    " NULL AS id"
    f" FROM deliveries d WHERE d.message_id >= $1 AND d.state != '{State.SENT}'"
    " GROUP BY 1, 2, 3"
    f" UNION ALL SELECT {_DOMAIN}, {SHOWN_STATE}, '', 1, NULL, d.id FROM deliveries d"
    f" WHERE d.message_id >= $1 AND d.state = '{State.SENT}'"
)
CONSOLE_ROUTED = (
    "SELECT DISTINCT d.message_id, e.detail FROM deliveries d"
    " JOIN events e ON e.delivery_id = d.id WHERE d.message_id >= $1 AND e.kind = 'routed'"
)
CONSOLE_REQUESTS = (
    "SELECT d.id, d.recipient, d.request, m.texts FROM deliveries d"
    " JOIN messages m ON m.id = d.message_id"
    " WHERE d.id = ANY($1::bigint[])"
)
CONSOLE_HOURLY_ACCEPTED = (
    "SELECT floor((m.received_at - $2) / 3600)::int AS hour, count(*) AS n,"
    f" count(*) FILTER (WHERE d.state = '{State.SUPPRESSED}') AS suppressed,"
    f" count(*) FILTER (WHERE d.state = '{State.HELD}') AS held"
    " FROM deliveries d JOIN messages m ON m.id = d.message_id WHERE d.message_id >= $1"
    " GROUP BY 1"
)
CONSOLE_HOURLY_EVENTS = (
    "SELECT floor((at - $1) / 3600)::int AS hour, kind, count(*) AS n FROM events"
    " WHERE at >= $1 AND kind IN ('sent', 'failed', 'refused') GROUP BY 1, 2"
)
CONSOLE_DROP = (
    f"UPDATE deliveries SET state = '{State.SUPPRESSED}', last_error = $2, updated_at = $1"
    f" WHERE message_id = $3 AND state IN ('{State.QUEUED}', '{State.UNCONFIRMED}', '{State.HELD}')"
    " RETURNING id"
)
CONSOLE_RELEASE = (
    "UPDATE deliveries SET next_attempt_at = $1, updated_at = $1"
    f" WHERE message_id = $2 AND state = '{State.HELD}' RETURNING id"
)
CONSOLE_HELD_SPENDS = (
    f"SELECT id, spend FROM deliveries WHERE message_id = $1 AND state = '{State.HELD}'"
)
CONSOLE_SEND_ANYWAY = (
    f"UPDATE deliveries SET state = '{State.QUEUED}', next_attempt_at = $1, updated_at = $1,"
    " last_error = NULL, spend = NULL"
    f" WHERE message_id = $2 AND state = '{State.HELD}' RETURNING id"
)
CONSOLE_SETTLE = (
    f"UPDATE deliveries SET state = '{State.SENT}', last_error = NULL, updated_at = $1"
    f" WHERE message_id = $2 AND state = '{State.UNCONFIRMED}' RETURNING id"
)
CONSOLE_FAILED = (
    _LINE + f" WHERE d.state = '{State.FAILED}' AND d.updated_at >= $1 AND d.updated_at <= $2"
    " ORDER BY d.updated_at DESC LIMIT $3"
)
CONSOLE_RETRY_FAILED = (
    f"UPDATE deliveries SET state = '{State.QUEUED}', next_attempt_at = $1, updated_at = $1"
    f" WHERE state = '{State.FAILED}' AND updated_at >= $2 AND updated_at <= $3 RETURNING id"
)
