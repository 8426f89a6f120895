"""Log lines for a terminal, for journald, or as JSON for a log pipeline."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from typing import TextIO

from gateway.times import log_time

_QUEUE_ID = re.compile(r"\bqueue_id=(\w+)")


class JsonFormatter(logging.Formatter):
    """One JSON object a line; `queue_id` as its own field wherever the line is about one."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        queue_id = getattr(record, "queue_id", None)
        if queue_id is None:
            match = _QUEUE_ID.search(message)
            queue_id = match.group(1) if match else None
        if queue_id:
            entry["queue_id"] = queue_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """Lines for a person: the stamp in local time names its zone, like every time shown."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return log_time(record.created)


class TurnBufferedHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes the event loop's INFO lines once per loop turn.

    A group commit settles many messages in one turn and each logs its "accepted" line; written
    one by one, every line is a write(2), around which the loop gives up the GIL to the spool's
    writer thread and then waits to get it back. Collected, they are one write at the end of
    the turn (bench/README.md has what that saves).
    Lines from other threads, lines outside a running loop, and WARNING and above are written at
    once (after whatever is pending, so the order holds). A kill -9 loses at most the lines of
    the turn it interrupts.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        # The loop whose next turn writes them: a loop that stopped before that turn leaves
        # them to the next loop's turn, or to flush() at exit.
        self._flush_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self._write_pending()
            super().emit(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_pending()
            super().emit(record)
            return
        try:
            line = self.format(record) + self.terminator
        except Exception:  # logging's own rule: a bad record must not raise
            self.handleError(record)
            return
        self._pending.append(line)
        if self._flush_on is not loop:
            self._flush_on = loop
            loop.call_soon(self._flush_turn)

    def _flush_turn(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._flush_on = None
            self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            text, self._pending = "".join(self._pending), []
            try:
                self.stream.write(text)
                self.stream.flush()
            except Exception:  # as StreamHandler.emit: report, do not raise
                self.handleError(logging.makeLogRecord({"msg": text.rstrip()}))

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()
        super().flush()


def setup_logging(level: str = "info", style: str = "plain") -> None:
    handler = TurnBufferedHandler(sys.stderr)
    if style == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # journald stamps each line itself; a terminal wants the time.
        stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
        handler.setFormatter(PlainFormatter(stamp + "%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    debug = level == "debug"
    # aiosmtpd logs every command line at INFO; a busy gateway's journal does not want that.
    logging.getLogger("mail.log").setLevel(logging.DEBUG if debug else logging.WARNING)
    for noisy in ("httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)


class Throttle:
    """At most `burst` lines a `period` for one kind of line that anyone on the network can
    cause (a forged callback, a wrong picture URL): a flood of them must not fill the disk. The
    lines held back are counted and told by the next line let through."""

    def __init__(self, burst: int = 10, period: float = 60.0) -> None:
        self.burst, self.period = burst, period
        self._opened = -period
        self._told = 0
        self._held = 0

    def allow(self) -> tuple[bool, str]:
        """Whether to log this one, and what to add to it: how many were held back before."""
        now = time.monotonic()
        if now - self._opened >= self.period:
            self._opened, self._told = now, 0
        if self._told >= self.burst:
            self._held += 1
            return False, ""
        self._told += 1
        held, self._held = self._held, 0
        return True, f" ({held} more like it not logged)" if held else ""
