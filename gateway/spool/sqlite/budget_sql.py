"""The limits' statements for the SQLite spool: the budget's counts and held deliveries
(gateway.spool.budget, held). Part of sql.py's Dialect, which names them; parameters as there."""

# Only State members and constant clauses are put into these texts, never a value from outside.
# ruff: noqa: S608

from __future__ import annotations

from gateway.spool.states import State

# SQLite's one writer needs no lock of the budget's own (budget.lock).
BUDGET_LOCK: str | None = None
# An upsert that changes nothing but takes the row, giving its counts: the budget's lock (the
# one writer needs none, but the statements are the same shape as PostgreSQL's).
BUDGET_DAYS = (
    "INSERT INTO budget_days (domain, day, at)"
    " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), ?2"
    " FROM json_each(?1) WHERE true"
    " ON CONFLICT (domain, day) DO UPDATE SET domain = excluded.domain"
    " RETURNING domain, day, messages, parts, held_back, tripped, notified"
)
# Every recipient a commit counts, in one statement (JSON [[domain, recipient], ...], now): the
# budget's one lock makes their order no matter.
BUDGET_RECIPIENTS = (
    "INSERT INTO budget_recipients (domain, recipient, times, last_at)"
    " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), '[]', ?2"
    " FROM json_each(?1) WHERE true"
    " ON CONFLICT (domain, recipient) DO UPDATE SET domain = excluded.domain"
    " RETURNING domain, recipient, times"
)
SET_BUDGET_DAY = (
    "UPDATE budget_days SET messages = ?3, parts = ?4, held_back = ?5, tripped = ?6, notified = ?7"
    " WHERE domain = ?1 AND day = ?2"
)
SET_BUDGET_RECIPIENTS = (
    "UPDATE budget_recipients SET times = j.t, last_at = ?2 FROM (SELECT"
    " json_extract(value, '$[0]') AS d, json_extract(value, '$[1]') AS r,"
    " json_extract(value, '$[2]') AS t FROM json_each(?1)) AS j"
    " WHERE budget_recipients.domain = j.d AND budget_recipients.recipient = j.r"
)
READ_BUDGET_DAY = "SELECT messages, parts FROM budget_days WHERE domain = ?1 AND day = ?2"
READ_BUDGET_RECIPIENT = "SELECT times FROM budget_recipients WHERE domain = ?1 AND recipient = ?2"
HELD_DUE = (
    "SELECT d.id, d.spend, m.received_at FROM deliveries d JOIN messages m ON m.id = d.message_id"
    f" WHERE d.state = '{State.HELD}' AND d.next_attempt_at <= ?1"
    " ORDER BY d.next_attempt_at, d.id LIMIT ?2"
)
HELD_DUE_NOW = (
    f"UPDATE deliveries SET next_attempt_at = ?1 WHERE state = '{State.HELD}'"
    " AND next_attempt_at > ?1"
)
FAIL_HELD = (
    f"UPDATE deliveries SET state = '{State.FAILED}', last_error = ?2, updated_at = ?3"
    f" WHERE id = ?1 AND state = '{State.HELD}'"
)
NEXT_HELD = f"SELECT min(next_attempt_at) FROM deliveries WHERE state = '{State.HELD}'"
RELEASE_HELD = (
    f"UPDATE deliveries SET state = '{State.QUEUED}', next_attempt_at = ?2, last_error = NULL,"
    f" spend = NULL, updated_at = ?2 WHERE id = ?1 AND state = '{State.HELD}'"
)
HOLD_AGAIN = (
    "UPDATE deliveries SET next_attempt_at = ?2, last_error = ?3, updated_at = ?4"
    f" WHERE id = ?1 AND state = '{State.HELD}'"
)
TRIPS_OWED = (
    "SELECT domain, day, tripped, held_back FROM budget_days"
    " WHERE notified = 0 AND tripped IS NOT NULL ORDER BY domain, day"
)
CLAIM_NOTICE = "UPDATE budget_days SET notified = 1 WHERE domain = ?1 AND day = ?2 AND notified = 0"
PURGE_BUDGET_DAYS = "DELETE FROM budget_days WHERE at < ?1"
PURGE_BUDGET_RECIPIENTS = "DELETE FROM budget_recipients WHERE last_at < ?1"
