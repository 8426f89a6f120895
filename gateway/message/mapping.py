"""From an envelope recipient and a parsed message to the platform's form fields: the text as
the domain renders it, made GSM-7 and cut where it asks (`shape`), and the X-Pulse-* overrides.

Pure functions: everything here can be tested without sockets, and `preview` uses exactly the
code the daemon uses.
"""

from __future__ import annotations

import functools

from gateway.config.domains import SMS_TYPES
from gateway.config.model import DomainConfig
from gateway.config.recipients import Recipient
from gateway.errors import BadContent
from gateway.message.parse import ParsedMessage
from gateway.message.schedule import send_date_header, ttl_header
from gateway.message.sms import ELLIPSIS, fit, is_gsm7
from gateway.message.text import clean_text
from gateway.message.translit import transliterate


def build_request(
    message: ParsedMessage, recipient: Recipient, domain: DomainConfig, mail_from: str
) -> dict[str, str]:
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


def render_text(
    message: ParsedMessage, recipient: Recipient, domain: DomainConfig, mail_from: str
) -> str:
    body = clean_text(strip_signature(message.text) if domain.strip_signature else message.text)
    if domain.text is None:
        text = "\n".join(part for part in (message.subject, body) if part.strip())
    else:
        text = domain.text.format_map(
            {
                "subject": message.subject,
                "body": body,
                "from": message.from_addr or mail_from,
                "from_name": message.from_name,
                "to": recipient.address,
                "recipient": recipient.sent_to,
                "domain": recipient.domain,
            }
        )
    text = clean_text(text)
    if domain.max_length is not None and len(text) > domain.max_length:
        text = text[: domain.max_length - 1].rstrip() + ELLIPSIS
    return text


def shape(request: dict[str, str], domain: DomainConfig) -> None:
    """Transliterates and cuts `request["sent_text"]` in place, as the domain says."""
    if domain.type in SMS_TYPES and (domain.transliterate or domain.max_parts is not None):
        request["sent_text"] = _shaped(request["sent_text"], domain.transliterate, domain.max_parts)


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


def strip_signature(body: str) -> str:
    """Cut at the last signature separator line ("-- "; many clients drop its trailing space)."""
    if "--" not in body:
        return body  # most bodies: no line to look for
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
