"""The statements of retransmissions and repeats for the PostgreSQL spool
(gateway.spool.repeats). Part of sql.py's Dialect, which names them; parameters as there."""

# Only State members and constant clauses are put into these texts, never a value from outside.

from __future__ import annotations

from gateway.spool.pg.arrays import columns
from gateway.spool.steps import Fetch, Query

# ORDER BY key: the rows are locked in that order, the same in every gateway's commit.
_CLAIM_RETRANSMISSIONS = (
    "INSERT INTO retransmissions (key, queue_id, at)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::float8[]) AS t(key, queue_id, at)"
    " ORDER BY key"
    " ON CONFLICT (key) DO UPDATE SET queue_id = excluded.queue_id, at = excluded.at"
    " WHERE retransmissions.at < excluded.at - $4 RETURNING key"
)


def claim_retransmissions(rows: list[tuple[str, str, float]], memory: float) -> Query:
    return Query(_CLAIM_RETRANSMISSIONS, [*columns(rows, 3), memory], Fetch.ROWS)


# previous_at is a column only so that RETURNING can give the time the row had before.
_NOTE_REPEATS = (
    "INSERT INTO repeats (key, sent_id, seen_at, window_s)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[])"
    " AS t(key, sent_id, seen_at, window_s) ORDER BY key"
    " ON CONFLICT (key) DO UPDATE SET previous_at = repeats.seen_at,"
    " seen_at = excluded.seen_at, window_s = excluded.window_s,"
    " sent_id = CASE WHEN excluded.seen_at - repeats.seen_at < excluded.window_s"
    " THEN repeats.sent_id ELSE excluded.sent_id END"
    " RETURNING key, previous_at, sent_id"
)


def note_repeats(rows: list[tuple[str, str, float, float]]) -> Query:
    return Query(_NOTE_REPEATS, columns(rows, 4), Fetch.ROWS)


RETRANSMISSIONS_OF = "SELECT key, queue_id, at FROM retransmissions WHERE key = ANY($1::text[])"
REPEATS_OF = "SELECT key, sent_id, seen_at FROM repeats WHERE key = ANY($1::text[])"
FORGET_RETRANSMISSIONS = "DELETE FROM retransmissions WHERE at < $1"
FORGET_REPEATS = "DELETE FROM repeats WHERE seen_at + window_s < $1"
UNCLAIM_RETRANSMISSIONS = "DELETE FROM retransmissions WHERE queue_id = ANY($1::text[])"
UNCLAIM_REPEATS = "DELETE FROM repeats WHERE sent_id = ANY($1::text[])"
