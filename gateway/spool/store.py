"""The durable spool: one SQLite file, one writer thread, commits grouped.

Why one thread: SQLite allows one writer at a time anyway, and a single connection owned by a
single thread needs no locking of our own. Why grouping: a commit with `synchronous=FULL` costs an
fsync; every job that arrived while the previous commit was running shares the next one. If a job
fails, the batch is run again with each job in its own savepoint, so one failing job does not
take its neighbours down. A caller's future
resolves only after the COMMIT that contains its work returned — that is what makes a 250 a
promise.

Deliveries are leased the way litequeue does it: leasing moves a row to `sending` and sets
`next_attempt_at` to the lease's end, so a lease a crash left behind simply becomes due again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ShuttingDown, SpoolError, TooManyTexts

log = logging.getLogger("smtp2pulse.spool")
T = TypeVar("T")

SCHEMA_VERSION = 3
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
}
# A request value this long is stored once per message, however many deliveries carry it
# (sent_text and html_text are the size of the mail; a delivery's own fields are a few bytes).
SHARED_MIN = 64
# What the distinct texts of one message may add up to, in units of smtp.max_message_size: room
# for the text and HTML of a message sent to several domains, not for a copy per recipient.
TEXTS_PER_MESSAGE_SIZE = 10



class SharedTexts:
    """The long request values of one message, each kept once however many requests carry it.

    Rendering a request per recipient makes a new copy of the text every time; sharing them as
    they are made keeps one copy in memory, and the spool stores what is shared once. Texts
    that differ per recipient (a template with {to} or {recipient}) cannot be shared, so what
    one message may cost is bounded: past TEXTS_PER_MESSAGE_SIZE times the size limit in
    distinct texts it is refused as too large, before the next copy is made.
    """

    __slots__ = ("_seen", "limit", "size")

    def __init__(self, max_message_size: int) -> None:
        self._seen: dict[str, str] = {}
        self.size = 0
        self.limit = TEXTS_PER_MESSAGE_SIZE * max_message_size

    def share(self, request: Mapping[str, str]) -> dict[str, str]:
        shared = dict(request)
        for key, value in request.items():
            if len(value) < SHARED_MIN:
                continue
            known = self._seen.get(value)
            if known is None:
                self.size += len(value)
                if self.size > self.limit:
                    raise TooManyTexts
                self._seen[value] = known = value
            shared[key] = known
        return shared


@dataclass(frozen=True, slots=True)
class NewDelivery:
    recipient: str
    request: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    mail_from: str
    peer: str
    helo: str
    raw: bytes
    deliveries: tuple[NewDelivery, ...]
    auth_user: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    message_id: str
    recipient: str
    request: Mapping[str, str]
    attempts: int
    received_at: float
    auth_user: str | None


@dataclass(frozen=True, slots=True)
class Result:
    """What one attempt changed: the new state and when, if ever, to try again."""

    delivery_id: int
    state: str
    next_attempt_at: float
    event: str
    detail: str = ""
    platform_id: str | None = None
    bounce: bool = False     # a final failure the envelope sender is to be told of


# A counter from a random start: unique within a process for 16 million ids a millisecond, and
# unlikely to meet another run's ids in the same millisecond — without a urandom call per message.
_TAIL = itertools.count(secrets.randbelow(1 << 24))


def new_queue_id(now: float) -> str:
    # Time first so ids sort by arrival, like Postfix queue ids; the tail keeps them unique.
    return f"{int(now * 1000):011X}{next(_TAIL) & 0xFFFFFF:06X}"


class _Job:
    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.fn, self.future, self.loop = fn, future, loop

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        _settle_all([(self, result, error)])


def _settle_all(outcomes: list[tuple[_Job, Any, BaseException | None]]) -> None:
    """Hand results to their loops: one wake-up per loop for a whole batch, not one per job."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, BaseException | None]]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, mine in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting any more
            loop.call_soon_threadsafe(_apply, mine)


def _apply(outcomes: list[tuple[_Job, Any, BaseException | None]]) -> None:
    for job, result, error in outcomes:
        if job.future.done():       # its caller gave up waiting (the write still happened)
            continue
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)


_STOP = object()


class Spool:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time,
                 max_batch: int = 512) -> None:
        self.path = Path(path)
        self.clock = clock
        self.max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self.commits = 0   # how many group commits ran, for tests and metrics

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, *, recover: bool = True) -> int:
        """Open (creating if needed); with `recover`, which only the daemon holding the spool's
        lock may ask for, take back leases a crash left. Returns how many were taken back."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[sqlite3.Connection] = loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready, loop),
                                        name="spool-writer", daemon=True)
        self._thread.start()
        await ready
        return await self.run(self._recover) if recover else 0

    async def stop(self) -> None:
        if self._thread is None or self._closed:
            return
        self._closed = True
        self._jobs.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._close_readers()

    def _create_private(self) -> None:
        """A new spool is readable by its owner only: it holds every message's text and
        address. SQLite gives its -wal and -shm files the database file's mode."""
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return
        except FileExistsError:
            pass
        # An existing file keeps the mode its owner gave it (a group may be meant to read
        # it); it is only pointed out.
        mode = self.path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("spool %s is readable by others than its owner (mode %04o); "
                        "chmod 600 it and its -wal and -shm files", self.path, mode)

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._create_private()
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=5.0)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL (not NORMAL) in WAL mode: a committed row survives power loss, not just a crash.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SpoolError(f"{self.path}: spool schema {version} is newer than this program")
        if version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _statements(SCHEMA):
                conn.execute(statement)
            for step in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                for statement in _statements(MIGRATIONS[step]):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        return conn

    def _run(self, ready: asyncio.Future[sqlite3.Connection],
             loop: asyncio.AbstractEventLoop) -> None:
        try:
            conn = self._open()
        except (sqlite3.Error, OSError, SpoolError) as exc:
            error = exc if isinstance(exc, SpoolError) else SpoolError(
                f"cannot open spool {self.path}: {exc}")
            _Job(lambda c: None, ready, loop).settle(error=error)
            return
        _Job(lambda c: None, ready, loop).settle(conn)
        try:
            while True:
                first = self._jobs.get()
                if first is _STOP:
                    break
                batch = [first]
                while len(batch) < self.max_batch:
                    try:
                        batch.append(self._jobs.get_nowait())
                    except queue.Empty:
                        break
                stop = _STOP in batch
                self._commit_batch(conn, [job for job in batch if isinstance(job, _Job)])
                if stop:
                    break
        finally:
            conn.close()
            self._fail_pending()

    def _fail_pending(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if isinstance(job, _Job):
                job.settle(error=ShuttingDown("spool is closed"))

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        # The writer thread needs the GIL back after every statement, and a busy event loop
        # holds it: statements are what a commit waits for. So a batch first runs without a
        # savepoint per job; only if something fails is it run again, each job in its own
        # savepoint, so that one bad job does not take its neighbours down. (A job may thus
        # run twice: jobs only touch the database, and the first run was rolled back.)
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [job.fn(conn) for job in batch]
            conn.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if len(batch) > 1:
                self._commit_one_by_one(conn, batch)
            else:
                batch[0].settle(error=_as_spool_error(exc))
            return
        self.commits += 1
        _settle_all([(job, result, None) for job, result in zip(batch, results, strict=True)])

    def _commit_one_by_one(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    result = job.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((job, None, _as_spool_error(exc)))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((job, result, None))
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = _as_spool_error(exc)
            log.error("spool commit failed: %s", error)
            _settle_all([(job, None, error) for job in batch])
            return
        _settle_all(outcomes)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on the writer thread inside a committed transaction; returns its result."""
        return await self.submit(fn)

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """`run` as a plain future, queued at once. Cancelling it only stops the waiting: the
        job is done (and committed) all the same."""
        if self._closed or self._thread is None:
            raise ShuttingDown("spool is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(fn, future, loop))
        return future

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in a read transaction on a connection of its own, in a worker thread.

        For queries that change nothing (queue list, metrics, a message's history): in WAL mode
        they read a snapshot while the writer goes on committing, where on the writer thread a
        long one would hold up every accept behind it."""
        if self._closed or self._thread is None:
            raise ShuttingDown("spool is closed")
        return await asyncio.to_thread(self._read, fn)

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            conn = None
        try:
            if conn is None:
                conn = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False, timeout=5.0)
                conn.execute("PRAGMA query_only=ON")
            conn.execute("BEGIN")   # deferred: one snapshot for all of fn's queries, no lock
            try:
                return fn(conn)
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
                conn = None
            raise _as_spool_error(exc) from exc
        finally:
            if conn is not None:
                self._readers.put(conn)
                if self._closed:
                    self._close_readers()

    def _close_readers(self) -> None:
        while True:
            try:
                self._readers.get_nowait().close()
            except queue.Empty:
                return

    # --- the accept path ---------------------------------------------------------------------

    def accept(self, message: IncomingMessage) -> asyncio.Future[str]:
        """Store a message and its deliveries durably; the future gives the queue id.

        A plain future, not a coroutine: on a busy loop every extra step to the 250 (a task
        to start, a shield to pass through) waits its turn behind every other session's."""
        now = self.clock()
        queue_id = new_queue_id(now)
        # Encoded here, on the caller's thread, so the writer thread only runs statements.
        texts, requests = pack_requests([d.request for d in message.deliveries])

        def insert(conn: sqlite3.Connection) -> str:
            conn.execute(
                "INSERT INTO messages (id, received_at, mail_from, peer, helo, auth_user, size,"
                " raw, texts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (queue_id, now, message.mail_from, message.peer, message.helo,
                 message.auth_user, len(message.raw), message.raw, texts))
            conn.executemany(
                "INSERT INTO deliveries (message_id, recipient, request, state,"
                " next_attempt_at, updated_at) VALUES (?, ?, ?, 'queued', ?, ?)",
                [(queue_id, delivery.recipient, request, now, now)
                 for delivery, request in zip(message.deliveries, requests, strict=True)])
            return queue_id
        return self.submit(insert)

    # --- the delivery path -------------------------------------------------------------------

    def _recover(self, conn: sqlite3.Connection) -> int:
        # Only one daemon uses a spool (the caller holds its lock), so any `sending` row was left
        # by a process that died mid-attempt: due again now, at least once.
        now = self.clock()
        cursor = conn.execute(
            "UPDATE deliveries SET state = 'queued', next_attempt_at = ?, updated_at = ?"
            " WHERE state = 'sending'", (now, now))
        return cursor.rowcount

    async def lease(self, limit: int, lease_seconds: float) -> list[Delivery]:
        def take(conn: sqlite3.Connection) -> list[Delivery]:
            now = self.clock()
            rows = conn.execute(
                "UPDATE deliveries SET state = 'sending', next_attempt_at = ?, updated_at = ?"
                " WHERE id IN (SELECT id FROM deliveries WHERE state IN ('queued', 'sending')"
                "   AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?)"
                " RETURNING id, message_id, recipient, request, attempts",
                (now + lease_seconds, now, now, limit)).fetchall()
            if not rows:
                return []
            meta = dict(_fetch_message_meta(conn, {row[1] for row in rows}))
            return [Delivery(id=row[0], message_id=row[1], recipient=row[2],
                             request=unpack_request(row[3], meta[row[1]][2]),
                             attempts=row[4], received_at=meta[row[1]][0],
                             auth_user=meta[row[1]][1])
                    for row in sorted(rows)]
        return await self.run(take)

    async def next_due(self) -> float | None:
        def earliest(conn: sqlite3.Connection) -> float | None:
            row = conn.execute("SELECT min(next_attempt_at) FROM deliveries"
                               " WHERE state IN ('queued', 'sending')").fetchone()
            return None if row[0] is None else float(row[0])
        return await self.run(earliest)

    async def record(self, result: Result) -> None:
        def write(conn: sqlite3.Connection) -> None:
            now = self.clock()
            cursor = conn.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_attempt_at = ?,"
                " platform_id = coalesce(?, platform_id), last_error = ?, updated_at = ?"
                " WHERE id = ?",
                (result.state, result.next_attempt_at, result.platform_id,
                 None if result.state == "sent" else result.detail, now, result.delivery_id))
            if cursor.rowcount == 0:
                return   # dropped by an operator while it was being sent
            if result.bounce:
                mark_bounce(conn, result.delivery_id)
            conn.execute("INSERT INTO events (delivery_id, at, kind, detail) VALUES (?, ?, ?, ?)",
                         (result.delivery_id, now, result.event, result.detail))
        await self.run(write)

    async def purge(self, older_than: float) -> int:
        """Forget messages whose every delivery ended before `older_than`."""
        def delete(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM messages WHERE received_at < ? AND NOT EXISTS (SELECT 1 FROM"
                " deliveries d WHERE d.message_id = messages.id AND (d.state IN"
                " ('queued', 'sending') OR d.updated_at >= ?))", (older_than, older_than))
            return cursor.rowcount
        return await self.run(delete)


def mark_bounce(conn: sqlite3.Connection, delivery_id: int) -> bool:
    """Queue one notification for a failed delivery; never for a null sender, never twice."""
    cursor = conn.execute(
        "UPDATE deliveries SET bounce = 'pending' WHERE id = ? AND bounce IS NULL AND"
        " (SELECT mail_from FROM messages WHERE messages.id = deliveries.message_id) != ''",
        (delivery_id,))
    return cursor.rowcount > 0


def _fetch_message_meta(conn: sqlite3.Connection, ids: set[str]
                        ) -> list[tuple[str, tuple[float, str | None, list[str]]]]:
    marks = ",".join("?" * len(ids))
    rows = conn.execute(
        f"SELECT id, received_at, auth_user, texts FROM messages WHERE id IN ({marks})",  # noqa: S608
        tuple(ids)).fetchall()
    return [(row[0], (row[1], row[2], load_texts(row[3]))) for row in rows]


def pack_requests(requests: list[Mapping[str, str]]) -> tuple[str | None, list[str]]:
    """A message's requests as stored: the long values once, in a list for the message (its
    `texts`), and each request as JSON in which such a value is its index in that list (a
    number, where a request's own values are always text)."""
    texts: list[str] = []
    index: dict[str, int] = {}
    packed: list[str] = []
    for request in requests:
        fields: dict[str, str | int] = {}
        for key, value in request.items():
            if len(value) >= SHARED_MIN:
                position = index.get(value)
                if position is None:
                    position = index[value] = len(texts)
                    texts.append(value)
                fields[key] = position
            else:
                fields[key] = value
        packed.append(json.dumps(fields, ensure_ascii=False))
    return (json.dumps(texts, ensure_ascii=False) if texts else None), packed


def load_texts(column: str | None) -> list[str]:
    return json.loads(column) if column else []


def unpack_request(column: str, texts: list[str]) -> dict[str, str]:
    """The full request back from a delivery's row and its message's texts; a row written
    before texts were shared holds every value itself and comes back as it is."""
    fields = json.loads(column)
    for key, value in fields.items():
        if isinstance(value, int):
            fields[key] = texts[value]
    return dict(fields)


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT on its own; one statement at a time keeps the upgrade atomic.
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


def _as_spool_error(exc: BaseException) -> SpoolError:
    if isinstance(exc, SpoolError):
        return exc
    return SpoolError(f"{type(exc).__name__}: {exc}")
