"""What a request costs: the SMS parts of its text, as the platform bills them.

Counted on the text as sent (gateway.message.mapping.shape has made it GSM-7 and cut it where the
domain asks), so that `preview`, the daemon, the accepted-message log line and `/metrics` all
count the parts of the same text.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from gateway.config.domains import SMS_TYPES
from gateway.message.sms import Segments, segments


def request_segments(request: Mapping[str, str]) -> Segments | None:
    """The segments of a request's text, for the types that are SMS; None for the others."""
    if request.get("type") not in SMS_TYPES:
        return None
    return _segments(request.get("sent_text", ""))


# Counted at accept (the log line) and again once sent (/metrics), usually moments apart in the
# same process: the second count is a lookup. Bounded, as the texts it keeps can be long.
_segments = functools.lru_cache(maxsize=256)(segments)


def total_parts(requests: Sequence[Mapping[str, str]]) -> int | None:
    """The SMS parts of all these requests together; None when none of them is an SMS."""
    counted = [s.parts for s in map(request_segments, requests) if s is not None]
    return sum(counted) if counted else None
