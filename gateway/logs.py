"""Log lines for a terminal, for journald, or as JSON for a log pipeline."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

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


def setup_logging(level: str = "info", style: str = "plain") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if style == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # journald stamps each line itself; a terminal wants the time.
        stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
        handler.setFormatter(logging.Formatter(stamp + "%(levelname)s %(name)s: %(message)s"))
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
