"""What tells a retransmission and a repeat apart from new mail: a key for each, per delivery,
decided by the spool in the commit that stores the message (gateway/spool/repeats.py).

A retransmission is the same mail sent again by a client that lost our 250: the same
Message-ID, envelope sender and recipient, and the same content. "Content" is the body and the
header fields its author wrote (ORIGINATOR below, and every X-Pulse-* field, which shape the
request), each unfolded, and line endings and trailing blank lines aside; every other field
is left out. A relay that retries adds or rewrites
trace fields on the way (Received, Return-Path, Delivered-To, Authentication-Results, a spam
score, ...), and those must not make a retransmission look new; a different text under one
Message-ID (a device that reuses one) differs in its body or Subject and is new.

A repeat is the same text to the same person again: the domain, sent_to and sent_text, for a
domain with `repeat_window`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator

from gateway.config.model import Config
from gateway.spool import NewDelivery
from gateway.spool.rows import Fingerprint

ORIGINATOR = frozenset(
    {
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "importance",
        "priority",
        "x-priority",
        "x-msmail-priority",
        "expires",
        "expiry-date",
        "deferred-delivery",
        "auto-submitted",
    }
)
_PULSE = "x-pulse-"


def fingerprinted(
    deliveries: tuple[NewDelivery, ...], raw: bytes, mail_from: str, config: Config
) -> tuple[NewDelivery, ...]:
    """The deliveries, each with its keys (none when there is nothing to key: no Message-ID
    and no repeat_window)."""
    message_id, content = _content(raw)
    windows = {name: d.repeat_window for name, d in config.domains.items() if d.repeat_window}
    if message_id is None and not windows:
        return deliveries
    base = None
    if message_id is not None:
        base = _hash(b"retransmission", message_id.encode(), mail_from.encode(), content)
    keyed = []
    for delivery in deliveries:
        sent_to = delivery.request.get("sent_to", "")
        retransmission = (
            None
            if base is None
            else _hash(base.encode(), delivery.recipient.lower().encode(), sent_to.encode())
        )
        domain = delivery.recipient.rpartition("@")[2].lower()
        window = windows.get(domain)
        text = None
        if window and delivery.suppressed is None and "sent_text" in delivery.request:
            text = _hash(
                b"repeat",
                domain.encode(),
                sent_to.encode(),
                delivery.request["sent_text"].encode("utf-8", "surrogateescape"),
            )
        fingerprint = Fingerprint(retransmission, text, window or 0.0)
        keyed.append(dataclasses.replace(delivery, fingerprint=fingerprint))
    return tuple(keyed)


def _hash(*parts: bytes) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        # Each part's length first: ("ab", "c") and ("a", "bc") are different keys.
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _content(raw: bytes) -> tuple[str | None, bytes]:
    """The Message-ID (None if absent or empty) and the bytes that stand for the content."""
    text = raw.replace(b"\r\n", b"\n")
    head, blank, body = text.partition(b"\n\n")
    if not blank:
        head, body = text, b""
    kept = []
    message_id = None
    for name, value in _fields(head):
        if name == "message-id" and message_id is None:
            message_id = value.decode("latin-1").strip() or None
        if name in ORIGINATOR or name.startswith(_PULSE):
            kept.append(name.encode() + b":" + value)
    return message_id, b"\n".join(kept) + b"\n\n" + body.rstrip(b"\n")


def _fields(head: bytes) -> Iterator[tuple[str, bytes]]:
    """Each header field's lower-case name and unfolded, stripped value, in order."""
    name: str | None = None
    value: list[bytes] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and name is not None:
            value.append(line.strip())
            continue
        if name is not None:
            yield name, b" ".join(value)
        field, colon, rest = line.partition(b":")
        name = field.strip().decode("latin-1").lower() if colon else None
        value = [rest.strip()]
    if name is not None:
        yield name, b" ".join(value)
