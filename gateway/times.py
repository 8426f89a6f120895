"""How a moment reads to a person: local date and time with its zone, wherever one is shown.

`queue`, the status page and the log lines all write times this way, so that a time read in one
can be compared with a time read in another, on another machine too.
"""

from __future__ import annotations

import datetime
import time

LOCAL = "%Y-%m-%d %H:%M:%S %z"  # 2026-12-07 05:43:12 +0300


def local_time(timestamp: float | None) -> str:
    """`timestamp` in this machine's local time, with its UTC offset; "-" for none."""
    if timestamp is None:
        return "-"
    return time.strftime(LOCAL, time.localtime(timestamp))


def iso_time(timestamp: float | None) -> str | None:
    """The same as ISO 8601 (for --json and the like); None for none."""
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def log_time(timestamp: float) -> str:
    """A log line's stamp: local time to the millisecond, with its UTC offset."""
    stamp = time.localtime(timestamp)
    millis = int(timestamp % 1 * 1000)
    return (
        time.strftime("%Y-%m-%d %H:%M:%S", stamp) + f".{millis:03d} " + time.strftime("%z", stamp)
    )
