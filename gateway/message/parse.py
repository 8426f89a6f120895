"""From the raw bytes of an e-mail to the few things the gateway sends on.

Everything here is total: broken or hostile input gives a degraded result, never an exception,
because the SMTP session still has to answer for a message nobody can parse.

Most mail to the gateway is the simplest shape, and parse_message reads that shape itself (the
fast path, _simple_parsed) instead of running the email package's FeedParser (_slow), giving
an equal ParsedMessage (tests/message/test_parse_simple.py pins it to _slow). The shape, exactly:
  * header lines `Name:value` up to the first empty line (CRLF or LF, the two may mix); a name
    is one or more of the printable ASCII characters other than ":"; a value is any bytes but
    CR and LF; no folded lines, no "From " envelope line, no lone CR, an empty line present;
  * Content-Type, Content-Transfer-Encoding and MIME-Version at most once, no
    Content-Disposition;
  * Content-Type absent, `text/plain`, or `text/plain; charset=name` (name maybe quoted; the
    form _SIMPLE_CONTENT_TYPE reads), ASCII, any case, nothing else around it;
  * Content-Transfer-Encoding absent, 7bit, 8bit, binary or quoted-printable (any case).
Anything else, or any exception on the way, goes to the FeedParser as before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import quopri
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from email.parser import BytesParser
from typing import TypeVar

from gateway.message.headers import MAX_PARSED_HEADER, TIMING_HEADERS, address, header_text
from gateway.message.headers import decode_bytes as decode_bytes  # also gateway.delivery's
from gateway.message.htmltext import html_to_text
from gateway.message.images import Attachment, first_picture
from gateway.message.mime import (
    CHARSET,
    MAX_DESCRIBED,
    MAX_PARTS,
    STRUCTURE,
    describe,
    first_headers,
    part_text,
    sort_parts,
    structure,
    walk,
)
from gateway.message.text import clean_text, lf, scrub

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
# Mail that may carry a picture has a thread of its own: re-encoding a camera's snapshot takes
# a good part of a second (Pillow lets go of the GIL for it), and a storm of them queued in
# _PARSERS made every large text mail wait its turn behind them. One thread: the pictures get
# one core at most, and the loop and the text mail the rest.
_PICTURES = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smtp2pulse-picture")

# The fast path's shape (see the module docstring). A line FeedParser would see as a header
# (its headerRE) that is neither folded nor "From ", then the empty line that ends the headers;
# a lone CR (a line break to FeedParser) fails the match.
_SIMPLE_HEADER_BLOCK = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+:[^\r\n]*\r?\n)*\r?\n")
# One of its lines as compat32's header_source_parse splits it: name up to the colon, value
# without its leading blanks (trailing ones stay).
_SIMPLE_HEADER_LINE = re.compile(r"([\x21-\x39\x3b-\x7e]+):[ \t]*([^\r\n]*)\r?\n")
_SIMPLE_CONTENT_TYPE = re.compile(
    rf"(?i:text/plain)(?:[ \t]*;[ \t]*(?i:charset)=(?:\"({CHARSET})\"|({CHARSET})))?", re.ASCII
)
# Transfer encodings whose payload get_payload(decode=True) gives as the raw body bytes.
_RAW_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
# Headers that say how to read the body: at most one each. Message.get would read the first of
# several, as the fast path does, but a message with two is odd enough for the slow path.
_STRUCTURAL = ("content-type", "content-transfer-encoding", "mime-version")
_MAY_HAVE_PICTURE = re.compile(rb"(?i)image/")


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedMessage:
    subject: str  # decoded, on one line
    text: str  # the readable body, LF line breaks, signature not yet cut
    html: str | None  # the text/html part, if any
    from_addr: str  # addr-spec of From:, '' if none
    from_name: str  # display name of From:, '' if none
    headers: Mapping[str, str]  # X-Pulse-* headers, lower-case names, first one wins
    auto_submitted: str  # Auto-Submitted:, lower-case, '' if absent
    dropped_attachments: tuple[str, ...]  # file names (or types) of the parts not used
    defects: int  # parse defects the email package found
    more_dropped: int = 0  # parts not used beyond those named in dropped_attachments
    # The headers that say when to send and how urgent it is (gateway.message.schedule).
    timing: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Every header's first value as it came (not decoded), lower-case names: what `routes`
    # match (gateway.message.routing decodes the few a route asks about).
    raw_headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # The first picture (gateway.message.images), used only by domains with images: true.
    picture: Attachment | None = None


def parse_message(raw: bytes, fallback_charset: str = "cp1251") -> ParsedMessage:
    """The parts of a raw message the gateway uses; never raises."""
    try:
        simple = _simple_parsed(raw, fallback_charset)
    except Exception:
        # The same input fails the same way on the slow path, which knows what to do then.
        simple = None
    return simple if simple is not None else _slow(raw, fallback_charset)


async def off_loop(raw: bytes, work: Callable[[], T], *, pictures: bool = True) -> T:
    """work(), which parses raw: at once for small mail, in a parser thread for large mail
    and, when `pictures` may be made (a domain has images: true), in the picture thread for
    mail that may carry one (decoding one is CPU work: gateway.message.images). Without such a
    domain a mail's pictures are never decoded, and its attachments must not queue it there."""
    if pictures and _MAY_HAVE_PICTURE.search(raw) is not None:
        return await asyncio.get_running_loop().run_in_executor(_PICTURES, work)
    if len(raw) <= OFF_LOOP_SIZE:
        return work()
    return await asyncio.get_running_loop().run_in_executor(_PARSERS, work)


def _slow(raw: bytes, fallback_charset: str) -> ParsedMessage:
    """parse_message through the email package's FeedParser, for any shape of message."""
    try:
        return _parsed(structure(raw), fallback_charset)
    except Exception:
        # A bug here or in the stdlib (deep nesting ends in RecursionError inside the parser)
        # must not lose the message: keep its headers if we can and its body as plain text.
        log.warning("unparseable message, its body is used as plain text", exc_info=True)
    try:
        parsed = _parsed(
            BytesParser(policy=STRUCTURE).parsebytes(raw, headersonly=True), fallback_charset
        )
        return dataclasses.replace(parsed, defects=parsed.defects + 1)
    except Exception:
        return _unparsed(raw, fallback_charset)


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
        raw[: block.end()].decode("ascii", "surrogateescape")
    ):
        key = name.lower()
        if key in first and key in _STRUCTURAL:
            return None
        first.setdefault(key, value)
    if "content-disposition" in first:
        return None  # an attachment is no body; let the slow path decide
    content_type = first.get("content-type")
    charset: str | None = None
    if content_type is not None:
        if len(content_type) > MAX_PARSED_HEADER:
            return None  # the slow path reads it cut short (see gateway.message.mime)
        plain = _SIMPLE_CONTENT_TYPE.fullmatch(content_type)
        if plain is None:
            return None
        charset = (plain[1] or plain[2] or "").lower() or None
    encoding = first.get("content-transfer-encoding", "").lower()
    body = raw[block.end() :]
    if encoding == "quoted-printable":
        body = quopri.decodestring(body)
    elif encoding and encoding not in _RAW_ENCODINGS:
        return None
    text = clean_text(decode_bytes(body, charset, fallback))
    return _assembled(first, fallback, text=text, html=None, dropped=(), defects=0)


def _parsed(message: Message, fallback: str) -> ParsedMessage:
    first = first_headers(message)
    parts = list(walk(message))
    plain, html, unused = sort_parts(parts[:MAX_PARTS])
    # LF line breaks and no trailing blank lines, as for sent_text: the platform gets one style.
    html_text = scrub(lf(part_text(html, fallback))).strip() if html is not None else None
    text = clean_text(part_text(plain, fallback)) if plain is not None else ""
    if not text and html_text is not None:
        text = html_to_text(html_text)
    dropped = tuple(describe(part, fallback) for part in unused[:MAX_DESCRIBED])
    more = len(unused) - len(dropped) + max(len(parts) - MAX_PARTS, 0)
    picture = first_picture(unused, html_text, lambda part: describe(part, fallback))
    # Counted last: decoding a payload (bad base64, say) adds defects of its own.
    defects = sum(len(part.defects) for part in parts)
    parsed = _assembled(
        first,
        fallback,
        text=text,
        html=html_text,
        dropped=dropped,
        defects=defects,
        more_dropped=more,
    )
    return parsed if picture is None else dataclasses.replace(parsed, picture=picture)


def _assembled(
    first: Mapping[str, str],
    fallback: str,
    *,
    text: str,
    html: str | None,
    dropped: tuple[str, ...],
    defects: int,
    more_dropped: int = 0,
) -> ParsedMessage:
    """The ParsedMessage, its header fields read from the first value of each header.

    Both paths end here, so the header fields cannot differ between them.
    """
    from_name, from_addr = address(first.get("from", ""), fallback)
    return ParsedMessage(
        subject=header_text(first.get("subject", ""), fallback),
        text=text,
        html=html,
        from_addr=from_addr,
        from_name=from_name,
        headers={
            name: header_text(value, fallback)
            for name, value in first.items()
            if name.startswith("x-pulse-")
        },
        auto_submitted=header_text(first.get("auto-submitted", ""), fallback).lower(),
        dropped_attachments=dropped,
        defects=defects,
        more_dropped=more_dropped,
        timing={
            name: header_text(value, fallback)
            for name, value in first.items()
            if name in TIMING_HEADERS
        },
        raw_headers=first,
    )


def _unparsed(raw: bytes, fallback: str) -> ParsedMessage:
    sections = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)
    body = sections[-1] if len(sections) == 2 else raw
    return ParsedMessage(
        subject="",
        text=clean_text(decode_bytes(body, None, fallback)),
        html=None,
        from_addr="",
        from_name="",
        headers={},
        auto_submitted="",
        dropped_attachments=(),
        defects=1,
    )
