"""The MIME structure of a message: read within bounds, walked, its parts sorted into body,
HTML and attachments.

The email package's parsers are quadratic in a header's length and recursive in the nesting,
and a hostile message chooses both; the bounds here (header lengths, parts looked at, depth)
keep one message's cost to what a real mail needs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.feedparser import FeedParser
from email.headerregistry import BaseHeader, HeaderRegistry, ParameterizedMIMEHeader
from email.message import Message
from email.policy import Compat32
from email.policy import default as default_policy
from typing import Any

from gateway.message.headers import MAX_PARSED_HEADER, decode_bytes, header_text, unfolded

# The headers whose parameters the email package parses (quadratic in their length, and the
# FeedParser itself asks Content-Type for its boundary): cut to MAX_PARSED_HEADER as they are
# read, before anything parses them.
_PARAMETERIZED = frozenset({"content-type", "content-disposition"})
# Parts looked at, in document order: enough for any real mail (a body, its HTML, a few dozen
# attachments); 100 000 empty parts fit in a megabyte, and each part costs tens of microseconds
# to sort and describe. The parts after these are neither shown nor named, only counted.
MAX_PARTS = 1000
# Unused parts named in ParsedMessage.dropped_attachments (for the log); the rest are counted.
MAX_DESCRIBED = 20
# Parts nested deeper than this are ignored; the parser itself gives up at a few hundred.
_MAX_DEPTH = 200
# What email.parser.Parser.parse reads from its file at a time (see structure).
_PARSER_CHUNK = 8192

# The usual Content-Type, `type/subtype; charset=name` (name maybe quoted), whose charset
# Message.get_content_charset (RFC 2231, unquoting, ASCII check) would give as name.lower().
_MIME_NAME = r"[A-Za-z0-9!#$&^_.+-]+"
CHARSET = r"[A-Za-z0-9_.:-]+"
_PLAIN_CONTENT_TYPE = re.compile(
    rf"{_MIME_NAME}/{_MIME_NAME}[ \t]*;[ \t]*(?i:charset)=(?:\"({CHARSET})\"|({CHARSET}))", re.ASCII
)


class _BoundedHeaderRegistry(HeaderRegistry):
    def __call__(self, name: str, value: Any) -> BaseHeader:
        if isinstance(value, str) and len(value) > MAX_PARSED_HEADER:
            value = value[:MAX_PARSED_HEADER]
        return super().__call__(name, value)


class _BoundedCompat32(Compat32):
    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = super().header_source_parse(sourcelines)
        if len(value) > MAX_PARSED_HEADER and name.lower() in _PARAMETERIZED:
            value = value[:MAX_PARSED_HEADER]
        return name, value


_POLICY = default_policy.clone(header_factory=_BoundedHeaderRegistry())
# The MIME structure is read with compat32: its headers stay strings (about ten times cheaper
# per message than policy.default's header objects), and every header the gateway shows a
# person is decoded here, from the raw value, anyway.
STRUCTURE = _BoundedCompat32()


def structure(raw: bytes) -> Message:
    """BytesParser(policy=STRUCTURE).parsebytes(raw), without its trip through a StringIO.

    The same FeedParser gets the same 8192-character pieces Parser.parse would read from the
    StringIO; filling it and reading it back cost a third of parsing a 150 KB message.
    """
    text = raw.decode("ascii", "surrogateescape")
    parser = FeedParser(policy=STRUCTURE)
    for start in range(0, len(text), _PARSER_CHUNK):
        parser.feed(text[start : start + _PARSER_CHUNK])
    return parser.close()


def first_headers(message: Message) -> dict[str, str]:
    """Raw header values by lower-cased name, first occurrence of each."""
    first: dict[str, str] = {}
    for name, value in message.raw_items():
        first.setdefault(str(name).strip().lower(), str(value))
    return first


def sort_parts(parts: list[Message]) -> tuple[Message | None, Message | None, list[Message]]:
    """The body's plain part, its html part, and the leaf parts used for neither."""
    plain: Message | None = None
    html: Message | None = None
    unused: list[Message] = []
    for part in parts:
        if _is_container(part):
            continue
        kind = _body_kind(part)
        if kind == "plain" and plain is None:
            plain = part
        elif kind == "html" and html is None:
            html = part
        else:
            unused.append(part)
    return plain, html, unused


def walk(message: Message) -> Iterator[Message]:
    """Every part in document order; iterative because the nesting depth is the sender's."""
    stack: list[tuple[Message, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        yield part
        if _is_container(part) and depth < _MAX_DEPTH:
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend(
                    (child, depth + 1) for child in reversed(children) if isinstance(child, Message)
                )


def _is_container(part: Message) -> bool:
    # message/rfc822 holds its message as a one-element list, but it is an attachment to us.
    return part.is_multipart() and _content_type(part).startswith("multipart/")


def _body_kind(part: Message) -> str | None:
    if _disposition(part) == "attachment":
        return None
    content_type = _content_type(part)
    # A multipart without a usable boundary reaches us as one unparsed leaf: show its text.
    if content_type == "text/plain" or content_type.startswith("multipart/"):
        return "plain"
    if content_type == "text/html":
        return "html"
    return None


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:
        return "application/octet-stream"


def _disposition(part: Message) -> str | None:
    try:
        return part.get_content_disposition()
    except Exception:
        return None


def part_text(part: Message, fallback: str) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    data = payload if isinstance(payload, bytes) else b""
    return decode_bytes(data, charset(part), fallback)


def charset(part: Message) -> str | None:
    """part.get_content_charset(), None if it fails; its parameter parser only when needed."""
    content_type = part.get("content-type")
    plain = _PLAIN_CONTENT_TYPE.fullmatch(content_type) if isinstance(content_type, str) else None
    if plain is not None:
        return (plain[1] or plain[2]).lower()
    try:
        charset = part.get_content_charset()
    except Exception:
        return None
    return charset if isinstance(charset, str) else None


def describe(part: Message, fallback: str) -> str:
    return _filename(part, fallback) or _content_type(part)


def _filename(part: Message, fallback: str) -> str:
    # Not part.get_filename(): it turns raw 8-bit names (1C writes them in CP1251) into U+FFFD.
    headers = first_headers(part)
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        if param not in headers.get(header, "").lower():
            continue  # the header parser costs more than the rest of a part
        value = _param(header, unfolded(headers.get(header, ""), fallback), param)
        if value:
            return header_text(value, fallback)
    return ""


def _param(header: str, value: str, param: str) -> str:
    """A parameter of a MIME header (RFC 2231 decoded), '' if absent or unparseable."""
    try:
        parsed = _POLICY.header_factory(header, value)
    except Exception:
        return ""
    if not isinstance(parsed, ParameterizedMIMEHeader):
        return ""
    return str(parsed.params.get(param) or "")
