"""An SMS request's text as it is sent: made GSM-7 where the domain asks, cut to `max_parts`.

Applied by gateway.message.prepare after the text is built, so that `preview`, the daemon, the
accepted-message log line and `/metrics` all count the parts of the same text.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from gateway.config.domains import SMS_TYPES
from gateway.config.model import DomainConfig
from gateway.message.sms import ELLIPSIS, Segments, fit, is_gsm7, segments
from gateway.message.translit import transliterate


def shape(request: dict[str, str], domain: DomainConfig) -> None:
    """Transliterates and cuts `request["sent_text"]` in place, as the domain says."""
    if domain.type in SMS_TYPES and (domain.transliterate or domain.max_parts is not None):
        request["sent_text"] = _shaped(request["sent_text"], domain.transliterate,
                                       domain.max_parts)


# One mail to many recipients is mostly one text many times: shaped once.
@functools.lru_cache(maxsize=8)
def _shaped(text: str, translit: bool, max_parts: int | None) -> str:
    ellipsis = ELLIPSIS
    if translit:
        text = transliterate(text)
        # The ellipsis a cut adds goes through the same table: a text made GSM-7 stays GSM-7.
        if is_gsm7(text):
            ellipsis = transliterate(ELLIPSIS)
    return text if max_parts is None else fit(text, max_parts, ellipsis)


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
