"""The statements of retransmissions and repeats for the SQLite spool (gateway.spool.repeats).
Part of sql.py's Dialect, which names them; parameters as there."""

# Only State members and constant clauses are put into these texts, never a value from outside.
# ruff: noqa: S608

from __future__ import annotations

import json

from gateway.spool.steps import Fetch, Query

_IDS = "(SELECT value FROM json_each(?{n}))"  # (as sql.py's: a JSON list of keys)

# Rows come as one JSON array of arrays, whatever their number: one statement per commit.
_FROM_JSON = "SELECT {columns} FROM json_each(?1) WHERE true"  # (WHERE: the upsert's parser)


def _json_columns(count: int) -> str:
    return ", ".join(f"json_extract(value, '$[{n}]')" for n in range(count))


_CLAIM_RETRANSMISSIONS = (
    "INSERT INTO retransmissions (key, queue_id, at) "
    + _FROM_JSON.format(columns=_json_columns(3))
    + " ON CONFLICT(key) DO UPDATE SET queue_id = excluded.queue_id, at = excluded.at"
    " WHERE retransmissions.at < excluded.at - ?2 RETURNING key"
)


def claim_retransmissions(rows: list[tuple[str, str, float]], memory: float) -> Query:
    return Query(_CLAIM_RETRANSMISSIONS, (json.dumps(rows), memory), Fetch.ROWS)


_NOTE_REPEATS = (
    "INSERT INTO repeats (key, sent_id, seen_at, window_s) "
    + _FROM_JSON.format(columns=_json_columns(4))
    + " ON CONFLICT(key) DO UPDATE SET previous_at = repeats.seen_at,"
    " seen_at = excluded.seen_at, window_s = excluded.window_s,"
    " sent_id = CASE WHEN excluded.seen_at - repeats.seen_at < excluded.window_s"
    " THEN repeats.sent_id ELSE excluded.sent_id END"
    " RETURNING key, previous_at, sent_id"
)


def note_repeats(rows: list[tuple[str, str, float, float]]) -> Query:
    return Query(_NOTE_REPEATS, (json.dumps(rows),), Fetch.ROWS)


RETRANSMISSIONS_OF = (
    f"SELECT key, queue_id, at FROM retransmissions WHERE key IN {_IDS.format(n=1)}"
)
REPEATS_OF = f"SELECT key, sent_id, seen_at FROM repeats WHERE key IN {_IDS.format(n=1)}"
FORGET_RETRANSMISSIONS = "DELETE FROM retransmissions WHERE at < ?1"
FORGET_REPEATS = "DELETE FROM repeats WHERE seen_at + window_s < ?1"
UNCLAIM_RETRANSMISSIONS = f"DELETE FROM retransmissions WHERE queue_id IN {_IDS.format(n=1)}"
UNCLAIM_REPEATS = f"DELETE FROM repeats WHERE sent_id IN {_IDS.format(n=1)}"
