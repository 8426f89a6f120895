"""From the raw bytes of an e-mail to the few things the gateway sends on.

Everything here is total: broken or hostile input gives a degraded result, never an exception,
because the SMTP session still has to answer for a message nobody can parse.

Most mail to the gateway is the simplest shape, and parse_message reads that shape itself (the
fast path, _simple_parsed) instead of running the email package's FeedParser (_slow), giving
an equal ParsedMessage (tests/test_parse_simple.py pins it to _slow). The shape, exactly:
  * header lines `Name:value` up to the first empty line (CRLF or LF, the two may mix); a name
    is one or more of the printable ASCII characters other than ":"; a value is any bytes but
    CR and LF; no folded lines, no "From " envelope line, no lone CR, an empty line present;
  * Content-Type, Content-Transfer-Encoding and MIME-Version at most once, no
    Content-Disposition;
  * Content-Type absent, `text/plain`, or `text/plain; charset=name` (name maybe quoted; the
    form _PLAIN_CONTENT_TYPE reads), ASCII, any case, nothing else around it;
  * Content-Transfer-Encoding absent, 7bit, 8bit, binary or quoted-printable (any case).
Anything else, or any exception on the way, goes to the FeedParser as before.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import logging
import quopri
import re
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from email.feedparser import FeedParser
from email.headerregistry import BaseHeader, HeaderRegistry, ParameterizedMIMEHeader
from email.message import Message
from email.parser import BytesParser
from email.policy import Compat32
from email.policy import default as default_policy
from email.utils import parseaddr
from typing import Any, TypeVar

from gateway.message.charsets import mail_codec
from gateway.message.htmltext import html_to_text
from gateway.message.text import clean_text, lf, one_line, scrub

log = logging.getLogger(__name__)
T = TypeVar("T")

# Mail larger than this is parsed in a parser thread, not on the event loop. Below it, the
# worst shapes under the caps here cost a few milliseconds; above it, a hostile message costs
# up to a second of CPU, which the thread spends while the loop keeps serving other clients.
# Ordinary mail (a text body of a few KB) stays on the loop and pays no thread round trip.
OFF_LOOP_SIZE = 8 * 1024
# Their own threads, not the default executor: password checks and bounces use that one and
# must not queue behind a burst of large mail. Two, because parsing holds the GIL: more threads
# would only take more turns from the event loop.
_PARSERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="smtp2pulse-parse")

# The stdlib header parser and address parser are quadratic in a header's length; the headers
# they see here (MIME structure, From) are never legitimately longer than this. A file name of
# 255 Cyrillic letters, percent-encoded in RFC 2231 form, is about 1.5 KB of it.
_MAX_PARSED_HEADER = 8192
# The headers whose parameters the email package parses (quadratic in their length, and the
# FeedParser itself asks Content-Type for its boundary): cut to _MAX_PARSED_HEADER as they are
# read, before anything parses them.
_PARAMETERIZED = frozenset({"content-type", "content-disposition"})
# Parts looked at, in document order: enough for any real mail (a body, its HTML, a few dozen
# attachments); 100 000 empty parts fit in a megabyte, and each part costs tens of microseconds
# to sort and describe. The parts after these are neither shown nor named, only counted.
_MAX_PARTS = 1000
# Unused parts named in ParsedMessage.dropped_attachments (for the log); the rest are counted.
_MAX_DESCRIBED = 20
# Parts nested deeper than this are ignored; the parser itself gives up at a few hundred.
_MAX_DEPTH = 200
# What email.parser.Parser.parse reads from its file at a time (see _structure).
_PARSER_CHUNK = 8192

# RFC 2047: =?charset[*lang]?B|Q?text?= where text is printable ASCII other than "?".
_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([!->@-~]*)\?=")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
# The usual From: forms, `Display Name <local@domain>` and `local@domain`, for which parseaddr
# (about a twentieth of an accept) is sure to return (name words joined by one space, address).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*"
# The usual Content-Type, `type/subtype; charset=name` (name maybe quoted), whose charset
# Message.get_content_charset (RFC 2231, unquoting, ASCII check) would give as name.lower().
_MIME_NAME = r"[A-Za-z0-9!#$&^_.+-]+"
_CHARSET = r"[A-Za-z0-9_.:-]+"
_PLAIN_CONTENT_TYPE = re.compile(
    rf"{_MIME_NAME}/{_MIME_NAME}[ \t]*;[ \t]*(?i:charset)=(?:\"({_CHARSET})\"|({_CHARSET}))",
    re.ASCII)
# The fast path's shape (see the module docstring). A line FeedParser would see as a header
# (its headerRE) that is neither folded nor "From ", then the empty line that ends the headers;
# a lone CR (a line break to FeedParser) fails the match.
_SIMPLE_HEADER_BLOCK = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+:[^\r\n]*\r?\n)*\r?\n")
# One of its lines as compat32's header_source_parse splits it: name up to the colon, value
# without its leading blanks (trailing ones stay).
_SIMPLE_HEADER_LINE = re.compile(r"([\x21-\x39\x3b-\x7e]+):[ \t]*([^\r\n]*)\r?\n")
_SIMPLE_CONTENT_TYPE = re.compile(
    rf"(?i:text/plain)(?:[ \t]*;[ \t]*(?i:charset)=(?:\"({_CHARSET})\"|({_CHARSET})))?",
    re.ASCII)
# Transfer encodings whose payload get_payload(decode=True) gives as the raw body bytes.
_RAW_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
# Headers that say how to read the body: at most one each. Message.get would read the first of
# several, as the fast path does, but a message with two is odd enough for the slow path.
_STRUCTURAL = ("content-type", "content-transfer-encoding", "mime-version")
_PLAIN_ADDRESS = re.compile(rf"((?:[\w!#$%&'*+/=?^`{{|}}~-]+ )*)<({_ADDR_SPEC})>|({_ADDR_SPEC})")


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedMessage:
    subject: str                  # decoded, on one line
    text: str                     # the readable body, LF line breaks, signature not yet cut
    html: str | None              # the text/html part, if any
    from_addr: str                # addr-spec of From:, '' if none
    from_name: str                # display name of From:, '' if none
    headers: Mapping[str, str]    # X-Pulse-* headers, lower-case names, first one wins
    auto_submitted: str           # Auto-Submitted:, lower-case, '' if absent
    dropped_attachments: tuple[str, ...]   # file names (or types) of the parts not used
    defects: int                  # parse defects the email package found
    more_dropped: int = 0         # parts not used beyond those named in dropped_attachments


class _BoundedHeaderRegistry(HeaderRegistry):
    def __call__(self, name: str, value: Any) -> BaseHeader:
        if isinstance(value, str) and len(value) > _MAX_PARSED_HEADER:
            value = value[:_MAX_PARSED_HEADER]
        return super().__call__(name, value)


class _BoundedCompat32(Compat32):
    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = super().header_source_parse(sourcelines)
        if len(value) > _MAX_PARSED_HEADER and name.lower() in _PARAMETERIZED:
            value = value[:_MAX_PARSED_HEADER]
        return name, value


_POLICY = default_policy.clone(header_factory=_BoundedHeaderRegistry())
# The MIME structure is read with compat32: its headers stay strings (about ten times cheaper
# per message than policy.default's header objects), and every header the gateway shows a
# person is decoded here, from the raw value, anyway.
_STRUCTURE = _BoundedCompat32()


def parse_message(raw: bytes, fallback_charset: str = "cp1251") -> ParsedMessage:
    """The parts of a raw message the gateway uses; never raises."""
    try:
        simple = _simple_parsed(raw, fallback_charset)
    except Exception:
        # The same input fails the same way on the slow path, which knows what to do then.
        simple = None
    return simple if simple is not None else _slow(raw, fallback_charset)


async def off_loop(raw: bytes, work: Callable[[], T]) -> T:
    """work(), which parses raw: at once for small mail, in a parser thread for large mail."""
    if len(raw) <= OFF_LOOP_SIZE:
        return work()
    return await asyncio.get_running_loop().run_in_executor(_PARSERS, work)


def _slow(raw: bytes, fallback_charset: str) -> ParsedMessage:
    """parse_message through the email package's FeedParser, for any shape of message."""
    try:
        return _parsed(_structure(raw), fallback_charset)
    except Exception:
        # A bug here or in the stdlib (deep nesting ends in RecursionError inside the parser)
        # must not lose the message: keep its headers if we can and its body as plain text.
        log.warning("unparseable message, its body is used as plain text", exc_info=True)
    try:
        parsed = _parsed(BytesParser(policy=_STRUCTURE).parsebytes(raw, headersonly=True),
                         fallback_charset)
        return dataclasses.replace(parsed, defects=parsed.defects + 1)
    except Exception:
        return _unparsed(raw, fallback_charset)


def _structure(raw: bytes) -> Message:
    """BytesParser(policy=_STRUCTURE).parsebytes(raw), without its trip through a StringIO.

    The same FeedParser gets the same 8192-character pieces Parser.parse would read from the
    StringIO; filling it and reading it back cost a third of parsing a 150 KB message.
    """
    text = raw.decode("ascii", "surrogateescape")
    parser = FeedParser(policy=_STRUCTURE)
    for start in range(0, len(text), _PARSER_CHUNK):
        parser.feed(text[start:start + _PARSER_CHUNK])
    return parser.close()


def decode_bytes(data: bytes, declared: str | None, fallback_charset: str) -> str:
    """Bytes as text: the declared charset if mail uses it, else UTF-8, else the fallback."""
    codec = mail_codec(declared)
    if codec == "ascii" and not data.isascii():
        codec = None   # legacy mailers label raw 8-bit text "us-ascii"
    if codec is not None:
        # Should a codec refuse errors="replace", the text is treated as undeclared.
        with contextlib.suppress(Exception):
            return data.decode(codec, "replace").removeprefix("\ufeff")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return data.decode(mail_codec(fallback_charset) or "utf-8", "replace")


def _simple_parsed(raw: bytes, fallback: str) -> ParsedMessage | None:
    """What _slow gives for a message of the fast path's shape; None for any other message.

    For this shape FeedParser stores each header as (name, value) exactly as
    _SIMPLE_HEADER_LINE splits it, with no defects, and the rest of the message after the empty
    line as the payload of a text/plain leaf; get_payload(decode=True) gives that payload's
    bytes back as they were (7bit, 8bit, binary) or through quopri.decodestring.
    """
    block = _SIMPLE_HEADER_BLOCK.match(raw)
    if block is None:
        return None
    first: dict[str, str] = {}
    for name, value in _SIMPLE_HEADER_LINE.findall(
            raw[:block.end()].decode("ascii", "surrogateescape")):
        key = name.lower()
        if key in first and key in _STRUCTURAL:
            return None
        first.setdefault(key, value)
    if "content-disposition" in first:
        return None   # an attachment is no body; let the slow path decide
    content_type = first.get("content-type")
    charset: str | None = None
    if content_type is not None:
        if len(content_type) > _MAX_PARSED_HEADER:
            return None   # the slow path reads it cut short (see _BoundedCompat32)
        plain = _SIMPLE_CONTENT_TYPE.fullmatch(content_type)
        if plain is None:
            return None
        charset = (plain[1] or plain[2] or "").lower() or None
    encoding = first.get("content-transfer-encoding", "").lower()
    body = raw[block.end():]
    if encoding == "quoted-printable":
        body = quopri.decodestring(body)
    elif encoding and encoding not in _RAW_ENCODINGS:
        return None
    text = clean_text(decode_bytes(body, charset, fallback))
    return _assembled(first, fallback, text=text, html=None, dropped=(), defects=0)


def _parsed(message: Message, fallback: str) -> ParsedMessage:
    first = _first_headers(message)
    parts = list(_walk(message))
    plain, html, unused = _sort_parts(parts[:_MAX_PARTS])
    # LF line breaks and no trailing blank lines, as for sent_text: the platform gets one style.
    html_text = (scrub(lf(_part_text(html, fallback))).strip()
                 if html is not None else None)
    text = clean_text(_part_text(plain, fallback)) if plain is not None else ""
    if not text and html_text is not None:
        text = html_to_text(html_text)
    dropped = tuple(_describe(part, fallback) for part in unused[:_MAX_DESCRIBED])
    more = len(unused) - len(dropped) + max(len(parts) - _MAX_PARTS, 0)
    # Counted last: decoding a payload (bad base64, say) adds defects of its own.
    defects = sum(len(part.defects) for part in parts)
    return _assembled(first, fallback, text=text, html=html_text, dropped=dropped,
                      defects=defects, more_dropped=more)


def _assembled(first: Mapping[str, str], fallback: str, *, text: str, html: str | None,
               dropped: tuple[str, ...], defects: int, more_dropped: int = 0) -> ParsedMessage:
    """The ParsedMessage, its header fields read from the first value of each header.

    Both paths end here, so the header fields cannot differ between them.
    """
    from_name, from_addr = _address(first.get("from", ""), fallback)
    return ParsedMessage(
        subject=_header_text(first.get("subject", ""), fallback),
        text=text,
        html=html,
        from_addr=from_addr,
        from_name=from_name,
        headers={name: _header_text(value, fallback) for name, value in first.items()
                 if name.startswith("x-pulse-")},
        auto_submitted=_header_text(first.get("auto-submitted", ""), fallback).lower(),
        dropped_attachments=dropped,
        defects=defects,
        more_dropped=more_dropped,
    )


def _unparsed(raw: bytes, fallback: str) -> ParsedMessage:
    sections = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)
    body = sections[-1] if len(sections) == 2 else raw
    return ParsedMessage(subject="", text=clean_text(decode_bytes(body, None, fallback)),
                         html=None, from_addr="", from_name="", headers={}, auto_submitted="",
                         dropped_attachments=(), defects=1)


def _first_headers(message: Message) -> dict[str, str]:
    """Raw header values by lower-cased name, first occurrence of each."""
    first: dict[str, str] = {}
    for name, value in message.raw_items():
        first.setdefault(str(name).strip().lower(), str(value))
    return first


# --- parts -----------------------------------------------------------------------------------

def _sort_parts(parts: list[Message]) -> tuple[Message | None, Message | None, list[Message]]:
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


def _walk(message: Message) -> Iterator[Message]:
    """Every part in document order; iterative because the nesting depth is the sender's."""
    stack: list[tuple[Message, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        yield part
        if _is_container(part) and depth < _MAX_DEPTH:
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend((child, depth + 1) for child in reversed(children)
                             if isinstance(child, Message))


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


def _part_text(part: Message, fallback: str) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    data = payload if isinstance(payload, bytes) else b""
    return decode_bytes(data, _charset(part), fallback)


def _charset(part: Message) -> str | None:
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


def _describe(part: Message, fallback: str) -> str:
    return _filename(part, fallback) or _content_type(part)


def _filename(part: Message, fallback: str) -> str:
    # Not part.get_filename(): it turns raw 8-bit names (1C writes them in CP1251) into U+FFFD.
    headers = _first_headers(part)
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        if param not in headers.get(header, "").lower():
            continue   # the header parser costs more than the rest of a part
        value = _param(header, _unfolded(headers.get(header, ""), fallback), param)
        if value:
            return _header_text(value, fallback)
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


# --- headers ---------------------------------------------------------------------------------

def _header_text(value: str, fallback: str) -> str:
    return one_line(_decode_words(_unfolded(value, fallback), fallback))


def _address(value: str, fallback: str) -> tuple[str, str]:
    """Display name and addr-spec of an address header."""
    name, addr = _split_address(_unfolded(value[:_MAX_PARSED_HEADER], fallback))
    return one_line(_decode_words(name, fallback)), one_line(addr)


def _split_address(value: str) -> tuple[str, str]:
    """parseaddr(value), without running its parser on the usual forms."""
    plain = _PLAIN_ADDRESS.fullmatch(value)
    if plain is None:
        return parseaddr(value)
    if plain[3] is not None:
        return "", plain[3]
    return plain[1][:-1], plain[2]


def _unfolded(value: str, fallback: str) -> str:
    """The header value on one line, with raw 8-bit bytes (no RFC 2047) decoded as text."""
    value = value.replace("\r", "").replace("\n", "")
    if value.isascii():
        return value
    # The parser keeps undecodable bytes as surrogate escapes; get the bytes back.
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = value.encode("utf-8", "replace")
    return decode_bytes(data, None, fallback)


def _decode_words(text: str, fallback: str) -> str:
    """Decode RFC 2047 encoded words; the ones that do not decode stay as they are."""
    if "=?" not in text:
        return text
    pieces: list[str] = []
    charset: str | None = None
    pending = bytearray()
    end = 0
    for match in _ENCODED_WORD.finditer(text):
        data = _word_bytes(match[2], match[3])
        if data is None:
            continue
        gap = text[end:match.start()]
        # Whitespace between encoded words is not text, and adjacent words in one charset may
        # split a multi-byte character between them, so their bytes are decoded together.
        if charset is not None and not gap.strip():
            if match[1].lower() == charset:
                pending.extend(data)
                end = match.end()
                continue
            gap = ""
        if charset is not None:
            pieces.append(decode_bytes(bytes(pending), charset, fallback))
        pieces.append(gap)
        charset, pending, end = match[1].lower(), bytearray(data), match.end()
    if charset is not None:
        pieces.append(decode_bytes(bytes(pending), charset, fallback))
    pieces.append(text[end:])
    return "".join(pieces)


def _word_bytes(encoding: str, payload: str) -> bytes | None:
    if encoding in "bB":
        try:
            return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
        except (binascii.Error, ValueError):
            return None
    data = payload.encode("ascii").replace(b"_", b" ")
    return _QP_ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), data)
