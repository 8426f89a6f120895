"""`quiet_hours`, `timezone`, `quiet_hours_urgent`: when a domain's mail is not sent at once.

The window is wall-clock time in the domain's time zone (an IANA name, read through zoneinfo;
absent: the machine's own local time), so it follows daylight saving time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

URGENT_CHOICES = ("wait", "send")
_WINDOW = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*-\s*([01]?\d|2[0-3]):([0-5]\d)\s*$")


@dataclass(frozen=True, slots=True)
class QuietHours:
    start: time
    end: time  # may be earlier than start: the window crosses midnight
    urgent_send: bool  # mail marked urgent (X-Priority: 1, Importance: high) is sent at once

    def contains(self, moment: time) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end


def window(value: Any) -> tuple[time, time]:
    match = _WINDOW.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f'{value!r} is not a window HH:MM-HH:MM (e.g. "22:00-08:00")')
    start = time(int(match[1]), int(match[2]))
    end = time(int(match[3]), int(match[4]))
    if start == end:
        raise ValueError(f"{value!r} is an empty window (start and end are the same)")
    return start, end


def zone(value: Any) -> ZoneInfo:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be an IANA time zone name such as Europe/Moscow")
    try:
        return ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{value!r} is not a time zone this machine knows (an IANA name such "
            f"as Europe/Moscow; install the tz database or the tzdata "
            f"package)"
        ) from None
