"""From a mail and its resolved recipients to the requests the spool stores: one per person.

The one place a message becomes requests, used by the SMTP handler at the end of DATA and by
`smtp2pulse preview`, so that what preview prints is what the daemon sends.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config.model import Config
from gateway.config.recipients import Recipient
from gateway.message.cost import shape, total_parts
from gateway.message.mapping import (
    build_request,
    dropped_note,
    ignored_overrides,
    listing,
)
from gateway.message.parse import parse_message
from gateway.message.schedule import scheduled
from gateway.spool.store import NewDelivery, SharedTexts


@dataclass(frozen=True, slots=True)
class Prepared:
    deliveries: tuple[NewDelivery, ...]   # in envelope order, the same person once
    notes: tuple[str, ...]                # what the log should say once there is a queue id
    parts: int | None = None              # SMS parts of all the deliveries; None: no SMS


def prepare(raw: bytes, recipients: Sequence[Recipient], mail_from: str,
            config: Config, now: float | None = None) -> Prepared:
    """The requests for `raw` to `recipients` (each resolved once, at RCPT time, with the same
    config), for mail that arrived at `now` (default: this moment); raises a Refusal
    (gateway.errors) for a message that makes no request."""
    arrived = time.time() if now is None else now
    parsed = parse_message(raw, config.smtp.fallback_charset)
    notes: list[str] = []
    dropped = dropped_note(parsed)
    if dropped is not None:
        notes.append(dropped)
    deliveries: list[NewDelivery] = []
    seen: set[tuple[str, str]] = set()
    texts = SharedTexts(config.smtp.max_message_size)
    for recipient in recipients:
        domain = config.domains[recipient.domain]
        ignored = ignored_overrides(parsed, domain)
        if ignored:
            notes.append(f"{listing(ignored)} not allowed for {domain.name}, ignored")
        if (domain.name, recipient.sent_to) in seen:
            continue   # the same person twice in one envelope gets one message
        seen.add((domain.name, recipient.sent_to))
        request = build_request(parsed, recipient, domain, mail_from)
        shape(request, domain)
        for note in scheduled(request, parsed, domain, arrived):
            if note not in notes:
                notes.append(note)
        deliveries.append(NewDelivery(recipient.address, texts.share(request)))
    return Prepared(tuple(deliveries), tuple(notes),
                    total_parts([d.request for d in deliveries]))
