"""From an envelope recipient and a parsed message to the platform's form fields.

Pure functions: everything here can be tested without sockets, and `preview` uses exactly the
code the daemon uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config.model import Config, DomainConfig
from gateway.config.recipients import recipient_value
from gateway.errors import BadContent, BadRecipient, RelayDenied
from gateway.message.parse import ParsedMessage
from gateway.message.schedule import send_date_header, ttl_header
from gateway.message.text import clean_text

ELLIPSIS = "…"
# A log line names at most this many things (attachments, headers), each cut to _LISTED_LENGTH:
# one hostile message must not write a megabyte line, and a person reading the log learns
# enough from the first few names and the count of the rest.
_LISTED = 10
_LISTED_LENGTH = 100


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str      # the envelope address as the client gave it
    domain: str       # the served domain it belongs to, lower-case
    sent_to: str      # what goes into the platform's sent_to


def resolve_recipient(address: str, config: Config) -> Recipient:
    """Which served domain an envelope recipient belongs to and what `sent_to` it becomes."""
    local, at, domain_name = address.rpartition("@")
    if not at or not local or not domain_name:
        raise BadRecipient(f"<{address}>: not a valid address")
    domain = config.domain(domain_name)
    if domain is None:
        raise RelayDenied(f"<{address}>: relay access denied, "
                          f"domain {domain_name.lower()} is not served here")
    return Recipient(address, domain.name, recipient_value(local, domain))


def build_request(message: ParsedMessage, recipient: Recipient, domain: DomainConfig,
                  mail_from: str) -> dict[str, str]:
    """The form fields of one send-message call, without token and callback."""
    text = render_text(message, recipient, domain, mail_from)
    if not text:
        raise BadContent("nothing to send: the message has no subject or text")
    request = {"type": domain.type, "sent_to": recipient.sent_to, "sent_text": text}
    if domain.sends_html and message.html and message.html.strip():
        request["html_text"] = message.html
    request.update(domain.fields)
    request.update(header_overrides(message, domain))
    return request


def render_text(message: ParsedMessage, recipient: Recipient, domain: DomainConfig,
                mail_from: str) -> str:
    body = clean_text(strip_signature(message.text) if domain.strip_signature else message.text)
    if domain.text is None:
        text = "\n".join(part for part in (message.subject, body) if part.strip())
    else:
        text = domain.text.format_map({
            "subject": message.subject,
            "body": body,
            "from": message.from_addr or mail_from,
            "from_name": message.from_name,
            "to": recipient.address,
            "recipient": recipient.sent_to,
            "domain": recipient.domain,
        })
    text = clean_text(text)
    if domain.max_length is not None and len(text) > domain.max_length:
        text = text[: domain.max_length - 1].rstrip() + ELLIPSIS
    return text


def strip_signature(body: str) -> str:
    """Cut at the last signature separator line ("-- "; many clients drop its trailing space)."""
    if "--" not in body:
        return body   # most bodies: no line to look for
    lines = body.split("\n")
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].rstrip() == "--":
            return "\n".join(lines[:index])
    return body


def header_overrides(message: ParsedMessage, domain: DomainConfig) -> dict[str, str]:
    """X-Pulse-* headers, each only where the domain allows it; bad values are refused."""
    overrides: dict[str, str] = {}
    for name in sorted(domain.allow_headers):
        header = "x-pulse-" + name.replace("_", "-")
        value = message.headers.get(header, "").strip()
        if not value:
            continue
        if name == "ttl":
            value = ttl_header(value)
        elif name == "send_date":
            value = send_date_header(value)
            name = "sent_date"
        overrides[name] = value
    return overrides


def ignored_overrides(message: ParsedMessage, domain: DomainConfig) -> list[str]:
    """The X-Pulse-* headers a message carried that its domain does not allow (for the log)."""
    allowed = {"x-pulse-" + name.replace("_", "-") for name in domain.allow_headers}
    return sorted(h for h in message.headers if h not in allowed)


def listing(names: Sequence[str], more: int = 0) -> str:
    """Names for a log line: the first few, each cut short, then how many more there are."""
    shown = [name if len(name) <= _LISTED_LENGTH else name[:_LISTED_LENGTH - 1] + ELLIPSIS
             for name in names[:_LISTED]]
    rest = len(names) - len(shown) + more
    return ", ".join(shown) + (f" and {rest} more" if rest else "")


def dropped_note(message: ParsedMessage) -> str | None:
    """The log note about the parts of a message that were not sent, if any."""
    if not message.dropped_attachments and not message.more_dropped:
        return None
    return f"attachments not sent: {listing(message.dropped_attachments, message.more_dropped)}"
