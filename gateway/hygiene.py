"""Mail that must not become paid messages: bounces and automatic replies.

A bounce (null reverse-path, `MAIL FROM:<>`) or an out-of-office reply sent to the gateway would
otherwise turn into an SMS nobody wanted, and a loop between two auto-responders into a bill.
What happens to them is `smtp.null_sender` and `smtp.auto_submitted`: refuse (a 5xx the sender
sees), drop (250, nothing stored, nothing sent) or accept (treated as any other mail).
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter

NULL_SENDERS = ("", "<>")

# Typical markers of automatic mail besides RFC 3834's Auto-Submitted: Exchange, Outlook and
# the vacation programs of Unix, cPanel, Zimbra and friends.
_MARKERS = re.compile(
    rb"^(?:x-autoreply|x-autorespond|x-autoresponder|x-auto-reply|x-vacation-reply)[ \t]*:"
    rb"|^(?:x-)?precedence[ \t]*:[ \t]*auto[-_]reply"
    rb"|^auto-submitted[ \t]*:[ \t]*(?!no[ \t]*(?:[;(\r\n]|$))\S"
    rb"|^content-type[ \t]*:[ \t]*multipart/report",
    re.IGNORECASE | re.MULTILINE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_HEADER_SCAN_LIMIT = 256 * 1024


def is_null_sender(mail_from: str | None) -> bool:
    return mail_from is None or mail_from in NULL_SENDERS


def auto_generated(raw: bytes) -> bool:
    """Does the header block mark the message as automatic (auto-reply, report, vacation)?"""
    end = _HEADER_END.search(raw, 0, _HEADER_SCAN_LIMIT)
    head = raw[:end.start() if end else _HEADER_SCAN_LIMIT]
    return _MARKERS.search(head) is not None


REFUSALS = {
    "null_sender": "550 5.7.1 Bounces (null sender) are not turned into messages here",
    "auto_submitted": "550 5.7.1 Automatic replies (Auto-Submitted) are not turned into "
                      "messages here",
}
DROPPED = {
    "null_sender": "250 2.0.0 Ok: bounce discarded, nothing sent",
    "auto_submitted": "250 2.0.0 Ok: automatic reply discarded, nothing sent",
}


class Filtered:
    """Counts what hygiene kept from the platform, by kind and action (shown on /metrics)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counter = Counter("smtp2pulse_messages_filtered",
                               "Bounces and automatic replies not sent, by kind and action",
                               ["kind", "action"], registry=registry)

    def count(self, kind: str, action: str) -> None:
        self.counter.labels(kind, action).inc()
