"""What happened after the platform took a message: signed callbacks, statuses, spool health.

The platform calls the `callback` URL of each request with `{id}` and `{status}` filled in, and
retries after 1 and 10 minutes until it gets a 200. The URL carries the delivery it is about and
an HMAC of it, so a callback can only speak for the delivery its URL was made for.
"""

from __future__ import annotations

import functools
import re

from gateway.delivery.signing import callback_url, sign, verify
from gateway.spool.interface import SpoolInterface
from gateway.spool.rows import SpoolStats
from gateway.spool.states import CallbackResult, StatusClass

__all__ = [
    "CallbackResult",
    "SpoolStats",
    "StatusClass",
    "callback_url",
    "classify_status",
    "probe_writable",
    "record_status",
    "sign",
    "spool_stats",
    "verify",
]

_DELIVERED, _FAILED, _PENDING = StatusClass.DELIVERED, StatusClass.FAILED, StatusClass.PENDING
# Kannel DLR values are bit flags; the worst bit present decides.
_KANNEL = ((2, _FAILED), (16, _FAILED), (1, _DELIVERED), (8, _PENDING), (4, _PENDING))
# Platform words we can read with confidence; anything else is kept verbatim as "unknown".
# The platform may pass on an SMSC's own word: SMPP's delivery receipt states (its `stat:`
# field, seven letters at most: DELIVRD, UNDELIV, ...) and their long forms mean the same.
_WORDS = {
    "delivered": _DELIVERED,
    "read": _DELIVERED,
    "seen": _DELIVERED,
    "delivrd": _DELIVERED,
    "undelivered": _FAILED,
    "failed": _FAILED,
    "rejected": _FAILED,
    "expired": _FAILED,
    "error": _FAILED,
    "not_delivered": _FAILED,
    "undeliv": _FAILED,
    "undeliverable": _FAILED,
    "rejectd": _FAILED,
    "deleted": _FAILED,
    "sent": _PENDING,
    "queued": _PENDING,
    "pending": _PENDING,
    "accepted": _PENDING,
    "enroute": _PENDING,
    "buffered": _PENDING,
    # SMPP's ACCEPTD: taken by the SMSC (or read to the subscriber by an operator), not a
    # handset's receipt: still on its way as far as we can tell.
    "acceptd": _PENDING,
    "unknown": StatusClass.UNKNOWN,
}
# Kannel's %d: the flags as ASCII digits. str.isdigit() also takes '²', which int() refuses,
# and int() refuses more than 4,300 digits; a real value is a byte.
_KANNEL_FLAGS = re.compile(r"[0-9]{1,5}")
MAX_STATUSES = 20  # distinct statuses kept per delivery; a real one goes through a handful


def classify_status(status: str, kannel: bool) -> StatusClass:
    text = status.strip()
    if kannel and _KANNEL_FLAGS.fullmatch(text):
        flags = int(text)
        for bit, meaning in _KANNEL:
            if flags & bit:
                return meaning
        return StatusClass.UNKNOWN
    return _WORDS.get(text.lower(), StatusClass.UNKNOWN)


async def record_status(
    spool: SpoolInterface, delivery_id: int, queue_id: str, platform_id: str, status: str
) -> tuple[CallbackResult, StatusClass]:
    """Store a callback's status on its delivery, once however often the platform repeats it."""
    return await spool.record_status(
        delivery_id,
        queue_id,
        platform_id,
        status,
        functools.partial(classify_status, status),
        max_statuses=MAX_STATUSES,
    )


async def spool_stats(spool: SpoolInterface) -> SpoolStats:
    return await spool.stats()


async def probe_writable(spool: SpoolInterface) -> None:
    """A real write and commit: raises if the spool cannot store right now."""
    await spool.probe_writable()
