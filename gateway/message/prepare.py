"""From a mail and its resolved recipients to the requests the spool stores: one per person.

The one place a message becomes requests, used by the SMTP handler at the end of DATA and by
`smtp2pulse preview`, so that what preview prints is what the daemon sends.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config.model import Config, DomainConfig
from gateway.config.recipients import Recipient
from gateway.errors import BadContent
from gateway.message import images, limits
from gateway.message.cost import total_parts
from gateway.message.fingerprint import fingerprinted
from gateway.message.mapping import build_request, ignored_overrides, shape
from gateway.message.parse import ParsedMessage, parse_message
from gateway.message.routing import Target, route_message
from gateway.message.schedule import scheduled
from gateway.message.sms import ELLIPSIS
from gateway.spool import NewDelivery, NewPicture, SharedTexts, Suppressed
from gateway.spool.media import IMAGE

# A log note names at most this many things (attachments, headers), each cut to _LISTED_LENGTH:
# one hostile message must not write a megabyte line, and a person reading the log learns
# enough from the first few names and the count of the rest.
_LISTED = 10
_LISTED_LENGTH = 100
SUBJECT_KEPT = 400  # characters of the subject the spool keeps for the console


@dataclass(frozen=True, slots=True)
class Prepared:
    deliveries: tuple[NewDelivery, ...]  # in envelope order, the same person once
    notes: tuple[str, ...]  # what the log should say once there is a queue id
    parts: int | None = None  # SMS parts of all the deliveries; None: no SMS
    route: str | None = None  # the route the message took (config `routes`)
    route_action: str = ""  # what that route did, for people
    picture: NewPicture | None = None  # stored with the message (domains.NAME.images)
    subject: str = ""  # the mail's, decoded: kept for the console


def prepare(
    raw: bytes,
    recipients: Sequence[Recipient],
    mail_from: str,
    config: Config,
    now: float | None = None,
    route_only: Sequence[str] = (),
    budgeted: bool = True,
) -> Prepared:
    """The requests for `raw` to `recipients` (each resolved once, at RCPT time, with the same
    config) and to the `route_only` addresses (accepted at RCPT only because a route names
    them), as `routes` send them, for mail that arrived at `now` (default: this moment); raises
    a Refusal (gateway.errors) for a message that makes no request. Each delivery carries what
    it costs its domain's `limits`, unless not `budgeted` (a limit's own notice)."""
    arrived = time.time() if now is None else now
    parsed = parse_message(raw, config.smtp.fallback_charset)
    notes: list[str] = []
    deliveries: list[NewDelivery] = []
    seen: set[tuple[str, str]] = set()
    texts = SharedTexts(config.smtp.max_message_size)
    routing = (
        route_message(parsed, mail_from, recipients, route_only, config) if config.routes else None
    )
    route = routing.route if routing is not None else None
    targets = (
        routing.targets
        if routing is not None
        else tuple(Target(r, config.domains[r.domain]) for r in recipients)
    )
    picture = images.kept(parsed.picture, (t.domain for t in targets))
    dropped = dropped_note(parsed, picture)
    notes.extend(n for n in (dropped, images.note(picture, (t.domain for t in targets))) if n)
    for target in targets:
        recipient, domain = target.recipient, target.domain
        suppressed = Suppressed("route", route.name) if target.drop and route else None
        event = None
        if route is not None and (target.drop or target.via):
            event = (
                "routed",
                f"route {route.name}: " + ("dropped" if target.drop else f"from {target.via}"),
            )
        if domain is None:  # dropped, to an address only the route knows: nothing to render
            deliveries.append(NewDelivery(recipient.address, {}, suppressed, event))
            continue
        ignored = ignored_overrides(parsed, domain)
        if ignored:
            notes.append(f"{listing(ignored)} not allowed for {domain.name}, ignored")
        if (domain.name, recipient.sent_to) in seen:
            continue  # the same person twice in one envelope gets one message
        seen.add((domain.name, recipient.sent_to))
        request = _request(parsed, recipient, domain, mail_from, suppressed is not None)
        image = images.image_field(picture, domain)
        if image is not None:
            request[IMAGE] = image
        for note in scheduled(request, parsed, domain, arrived):
            if note not in notes:
                notes.append(note)
        cost = limits.spend(domain, recipient.sent_to, request, arrived) if budgeted else None
        deliveries.append(
            NewDelivery(recipient.address, texts.share(request), suppressed, event, cost)
        )
    sent = [d.request for d in deliveries if d.suppressed is None]
    return Prepared(
        fingerprinted(tuple(deliveries), raw, mail_from, config),
        tuple(notes),
        total_parts(sent),
        route.name if route else None,
        route.action if route else "",
        picture,
        # Without NUL (no PostgreSQL text takes one) and cut short: only shown and searched.
        parsed.subject.replace("\x00", "")[:SUBJECT_KEPT],
    )


def _request(
    parsed: ParsedMessage, recipient: Recipient, domain: DomainConfig, mail_from: str, dropped: bool
) -> dict[str, str]:
    try:
        request = build_request(parsed, recipient, domain, mail_from)
    except BadContent:
        if not dropped:
            raise
        # Kept, never sent: an empty text is no reason to refuse what a route drops.
        return {"type": domain.type, "sent_to": recipient.sent_to}
    shape(request, domain)
    return request


def listing(names: Sequence[str], more: int = 0) -> str:
    """Names for a log note: the first few, each cut short, then how many more there are."""
    shown = [
        name if len(name) <= _LISTED_LENGTH else name[: _LISTED_LENGTH - 1] + ELLIPSIS
        for name in names[:_LISTED]
    ]
    rest = len(names) - len(shown) + more
    return ", ".join(shown) + (f" and {rest} more" if rest else "")


def dropped_note(message: ParsedMessage, picture: NewPicture | None = None) -> str | None:
    """The log note about the parts of a message that were not sent, if any (the picture, when
    one is kept, has a note of its own)."""
    dropped = list(message.dropped_attachments)
    kept = picture is not None and picture.about.problem is None
    if kept and message.picture is not None and message.picture.name in dropped:
        dropped.remove(message.picture.name)
    if not dropped and not message.more_dropped:
        return None
    return f"attachments not sent: {listing(dropped, message.more_dropped)}"
