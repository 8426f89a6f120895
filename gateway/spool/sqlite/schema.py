"""The spool's tables and how a file written by an earlier release is brought up to date.

`PRAGMA user_version` holds the schema's version. A new spool runs the schema and every
migration; an older one runs the migrations after its version, all in one transaction, so an
upgrade that fails leaves the file as it was. A spool newer than this program is refused.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from gateway.errors import SpoolError
from gateway.spool.sqlite import sql

log = logging.getLogger("smtp2pulse.spool")

SCHEMA_VERSION = 8
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id          TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    mail_from   TEXT NOT NULL,
    peer        TEXT NOT NULL,
    helo        TEXT NOT NULL DEFAULT '',
    auth_user   TEXT,
    size        INTEGER NOT NULL,
    raw         BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY,
    message_id      TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    recipient       TEXT NOT NULL,
    request         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    platform_id     TEXT,
    last_error      TEXT,
    updated_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(next_attempt_at)
    WHERE state IN ('queued', 'sending');
CREATE INDEX IF NOT EXISTS deliveries_by_message ON deliveries(message_id);
CREATE TABLE IF NOT EXISTS events (
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    at          REAL NOT NULL,
    kind        TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_by_delivery ON events(delivery_id);
"""
# Each step brings a spool from the version before it; a new spool runs them all.
# (The states in the partial indexes are spelled as dialect.LEASABLE_IN and UNFINISHED_IN spell
# them: the planner uses such an index only for a query whose WHERE is the index's own.)
MIGRATIONS = {
    2: """
ALTER TABLE deliveries ADD COLUMN status TEXT;        -- the platform's last status, verbatim
ALTER TABLE deliveries ADD COLUMN status_class TEXT;  -- delivered | failed | pending | unknown
ALTER TABLE deliveries ADD COLUMN status_at REAL;
ALTER TABLE deliveries ADD COLUMN bounce TEXT;        -- pending | sent | failed (DSN to sender)
CREATE INDEX IF NOT EXISTS deliveries_bounce ON deliveries(bounce) WHERE bounce = 'pending';
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
""",
    3: """
ALTER TABLE messages ADD COLUMN texts TEXT;  -- JSON list: the long values its requests share
-- (No index on deliveries(state): the planner would take it for the lease's query instead of
-- deliveries_due, and scan every queued row at each lease.)
CREATE INDEX IF NOT EXISTS messages_by_arrival ON messages(received_at);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries(message_id)
    WHERE state IN ('queued', 'sending');
""",
    # Unconfirmed deliveries (a batch's reply said neither yes nor no) are unfinished too.
    4: """
DROP INDEX IF EXISTS deliveries_pending;
CREATE INDEX deliveries_pending ON deliveries(message_id)
    WHERE state IN ('queued', 'sending', 'unconfirmed');
CREATE INDEX IF NOT EXISTS deliveries_unconfirmed ON deliveries(message_id)
    WHERE state = 'unconfirmed';
""",
    # Retransmissions and repeats (spool/repeats.py): keys the accept commit decides by.
    5: """
CREATE TABLE IF NOT EXISTS retransmissions (
    key      TEXT PRIMARY KEY,  -- Message-ID, sender, recipient, content (message/fingerprint.py)
    queue_id TEXT NOT NULL,     -- the message first accepted with it
    at       REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS retransmissions_by_time ON retransmissions(at);
CREATE TABLE IF NOT EXISTS repeats (
    key         TEXT PRIMARY KEY,  -- domain, sent_to, sent_text
    sent_id     TEXT NOT NULL,     -- the queue id the window began with (the one sent)
    seen_at     REAL NOT NULL,     -- the text's last arrival: the window runs from there
    window_s    REAL NOT NULL,
    previous_at REAL               -- the arrival before (what the upsert returns)
) WITHOUT ROWID;
""",
    # Limits (gateway.spool.budget): a domain's counts by day, a recipient's window, and what a
    # held delivery will cost when it is released.
    6: """
ALTER TABLE deliveries ADD COLUMN spend TEXT;  -- JSON [domain, recipient, parts] while held
CREATE INDEX IF NOT EXISTS deliveries_held ON deliveries(next_attempt_at) WHERE state = 'held';
CREATE TABLE IF NOT EXISTS budget_days (
    domain   TEXT NOT NULL,
    day      TEXT NOT NULL,                -- the domain's calendar day, YYYY-MM-DD
    at       REAL NOT NULL,                -- first counted (for purging)
    messages INTEGER NOT NULL DEFAULT 0,
    parts    INTEGER NOT NULL DEFAULT 0,
    held_back INTEGER NOT NULL DEFAULT 0,  -- held, dropped or refused by a limit
    tripped  TEXT,                         -- the first limit that tripped that day
    notified INTEGER NOT NULL DEFAULT 1,   -- 0 while its notice is owed
    PRIMARY KEY (domain, day)
);
CREATE TABLE IF NOT EXISTS budget_recipients (
    domain    TEXT NOT NULL,
    recipient TEXT NOT NULL,
    times     TEXT NOT NULL,               -- JSON: when each counted message was admitted
    last_at   REAL NOT NULL,
    PRIMARY KEY (domain, recipient)
);
""",
    # A message's picture (domains.NAME.images), gone with the message.
    7: """
CREATE TABLE IF NOT EXISTS media (
    message_id   TEXT PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    content_type TEXT NOT NULL,               -- image/jpeg | image/png; '' when refused
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    size         INTEGER NOT NULL,
    source       TEXT NOT NULL,               -- the part's name and size, as it came
    source_size  INTEGER NOT NULL,
    problem      TEXT,                        -- why none is sent
    data         BLOB
);
""",
    # The console (status page) shows and searches a message's subject: decoded at accept, kept
    # beside it rather than parsed again from the raw mail for every line of a listing.
    8: """
ALTER TABLE messages ADD COLUMN subject TEXT NOT NULL DEFAULT '';
""",
}


def open_writer(path: Path) -> sqlite3.Connection:
    """The one connection that writes: created private if new, upgraded if old."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _create_private(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.execute(sql.JOURNAL_WAL)
    conn.execute(sql.SYNCHRONOUS_FULL)
    conn.execute(sql.FOREIGN_KEYS_ON)
    _migrate(conn, path)
    return conn


def open_reader(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.execute(sql.QUERY_ONLY)
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = int(conn.execute(sql.USER_VERSION).fetchone()[0])
    if version > SCHEMA_VERSION:
        raise SpoolError(f"{path}: spool schema {version} is newer than this program")
    if version == SCHEMA_VERSION:
        return
    conn.execute(sql.BEGIN_WRITE)
    for statement in _statements(SCHEMA):
        conn.execute(statement)
    for step in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
        for statement in _statements(MIGRATIONS[step]):
            conn.execute(statement)
    conn.execute(sql.SET_USER_VERSION.format(version=SCHEMA_VERSION))
    conn.execute(sql.COMMIT)


def _create_private(path: Path) -> None:
    """A new spool is readable by its owner only: it holds every message's text and address.
    SQLite gives its -wal and -shm files the database file's mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    # An existing file keeps the mode its owner gave it (a group may be meant to read it); it is
    # only pointed out.
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning(
            "spool %s is readable by others than its owner (mode %04o); "
            "chmod 600 it and its -wal and -shm files",
            path,
            mode,
        )


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT on its own; one statement at a time keeps the upgrade atomic.
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]
