"""The limits' statements for the PostgreSQL spool: the budget's counts and held deliveries
(gateway.spool.budget, held). Part of sql.py's Dialect, which names them; parameters as there."""

# Only State members and constant clauses are put into these texts, never a value from outside.
# ruff: noqa: S608

from __future__ import annotations

from gateway.spool.states import State

# budget.lock: one advisory lock for the transaction, taken before any budget row (its key is
# arbitrary, the same in every gateway of the database).
_BUDGET_KEY = 8318038361634187124
BUDGET_LOCK: str | None = f"SELECT pg_advisory_xact_lock({_BUDGET_KEY})"
# The upsert takes the row lock (waiting for another gateway's commit that holds it) and gives
# the counts as that commit left them: each budget job locks its rows so, in one sorted order.
# Every day a commit counts, in one statement (JSON [[domain, day], ...], now), after the budget's
# lock: the lock's subquery yields the one row each day's is joined with, so it is taken first.
BUDGET_DAYS = (
    "INSERT INTO budget_days (domain, day, at)"
    " SELECT x->>0, x->>1, $2::double precision FROM"
    f" (SELECT pg_advisory_xact_lock({_BUDGET_KEY})) AS budget_lock,"
    " jsonb_array_elements($1::jsonb) AS x"
    " ON CONFLICT (domain, day) DO UPDATE SET domain = excluded.domain"
    " RETURNING domain, day, messages, parts, held_back, tripped, notified"
)
# Every recipient a commit counts, in one statement (JSON [[domain, recipient], ...], now): the
# budget's one lock makes their order no matter.
BUDGET_RECIPIENTS = (
    "INSERT INTO budget_recipients (domain, recipient, times, last_at)"
    " SELECT x->>0, x->>1, '[]', $2::double precision FROM jsonb_array_elements($1::jsonb) AS x"
    " ON CONFLICT (domain, recipient) DO UPDATE SET domain = excluded.domain"
    " RETURNING domain, recipient, times"
)
SET_BUDGET_DAY = (
    "UPDATE budget_days SET messages = $3, parts = $4, held_back = $5, tripped = $6, notified = $7"
    " WHERE domain = $1 AND day = $2"
)
SET_BUDGET_RECIPIENTS = (
    "UPDATE budget_recipients b SET times = x->>2, last_at = $2::double precision"
    " FROM jsonb_array_elements($1::jsonb) AS x WHERE b.domain = x->>0 AND b.recipient = x->>1"
)
READ_BUDGET_DAY = "SELECT messages, parts FROM budget_days WHERE domain = $1 AND day = $2"
READ_BUDGET_RECIPIENT = "SELECT times FROM budget_recipients WHERE domain = $1 AND recipient = $2"
# SKIP LOCKED: gateways releasing at once take different ones.
HELD_DUE = (
    "SELECT d.id, d.spend, m.received_at FROM deliveries d JOIN messages m ON m.id = d.message_id"
    f" WHERE d.state = '{State.HELD}' AND d.next_attempt_at <= $1"
    " ORDER BY d.next_attempt_at, d.id LIMIT $2 FOR UPDATE OF d SKIP LOCKED"
)
HELD_DUE_NOW = (
    f"UPDATE deliveries SET next_attempt_at = $1 WHERE state = '{State.HELD}'"
    " AND next_attempt_at > $1"
)
FAIL_HELD = (
    f"UPDATE deliveries SET state = '{State.FAILED}', last_error = $2, updated_at = $3"
    f" WHERE id = $1 AND state = '{State.HELD}'"
)
NEXT_HELD = f"SELECT min(next_attempt_at) FROM deliveries WHERE state = '{State.HELD}'"
RELEASE_HELD = (
    f"UPDATE deliveries SET state = '{State.QUEUED}', next_attempt_at = $2, last_error = NULL,"
    f" spend = NULL, updated_at = $2 WHERE id = $1 AND state = '{State.HELD}'"
)
HOLD_AGAIN = (
    "UPDATE deliveries SET next_attempt_at = $2, last_error = $3, updated_at = $4"
    f" WHERE id = $1 AND state = '{State.HELD}'"
)
TRIPS_OWED = (
    "SELECT domain, day, tripped, held_back FROM budget_days"
    " WHERE notified = 0 AND tripped IS NOT NULL ORDER BY domain, day"
)
CLAIM_NOTICE = "UPDATE budget_days SET notified = 1 WHERE domain = $1 AND day = $2 AND notified = 0"
PURGE_BUDGET_DAYS = "DELETE FROM budget_days WHERE at < $1"
PURGE_BUDGET_RECIPIENTS = "DELETE FROM budget_recipients WHERE last_at < $1"
