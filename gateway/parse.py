"""From the raw bytes of an e-mail to the few things the gateway sends on.

Everything here is total: broken or hostile input gives a degraded result, never an exception,
because the SMTP session still has to answer for a message nobody can parse.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import dataclasses
import logging
import re
from collections.abc import Iterator, Mapping
from email.headerregistry import BaseHeader, HeaderRegistry, ParameterizedMIMEHeader
from email.message import Message
from email.parser import BytesParser
from email.policy import default as default_policy
from email.utils import parseaddr
from html import unescape
from html.parser import HTMLParser
from typing import Any

log = logging.getLogger(__name__)

# The stdlib header parser and address parser are quadratic in a header's length; the headers
# they see here (MIME structure, From) are never legitimately longer than this.
_MAX_PARSED_HEADER = 8192
# Parts nested deeper than this are ignored; the parser itself gives up at a few hundred.
_MAX_DEPTH = 200

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_BLANK_LINES = re.compile(r"\n{3,}")
# RFC 2047: =?charset[*lang]?B|Q?text?= where text is printable ASCII other than "?".
_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([!->@-~]*)\?=")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


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


class _BoundedHeaderRegistry(HeaderRegistry):
    def __call__(self, name: str, value: Any) -> BaseHeader:
        if isinstance(value, str) and len(value) > _MAX_PARSED_HEADER:
            value = value[:_MAX_PARSED_HEADER]
        return super().__call__(name, value)


_POLICY = default_policy.clone(header_factory=_BoundedHeaderRegistry())


def parse_message(raw: bytes, fallback_charset: str = "cp1251") -> ParsedMessage:
    """The parts of a raw message the gateway uses; never raises."""
    try:
        return _parsed(BytesParser(policy=_POLICY).parsebytes(raw), fallback_charset)
    except Exception:
        # A bug here or in the stdlib (deep nesting ends in RecursionError inside the parser)
        # must not lose the message: keep its headers if we can and its body as plain text.
        log.warning("unparseable message, its body is used as plain text", exc_info=True)
    try:
        parsed = _parsed(BytesParser(policy=_POLICY).parsebytes(raw, headersonly=True),
                         fallback_charset)
        return dataclasses.replace(parsed, defects=parsed.defects + 1)
    except Exception:
        return _unparsed(raw, fallback_charset)


def decode_bytes(data: bytes, declared: str | None, fallback_charset: str) -> str:
    """Bytes as text: the declared charset if Python knows it, else UTF-8, else the fallback."""
    codec = _text_codec(declared)
    if codec == "ascii" and not data.isascii():
        codec = None   # legacy mailers label raw 8-bit text "us-ascii"
    if codec is not None:
        # Some codecs (idna) refuse errors="replace"; the text is then treated as undeclared.
        with contextlib.suppress(Exception):
            return data.decode(codec, "replace").removeprefix("\ufeff")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return data.decode(_text_codec(fallback_charset) or "utf-8", "replace")


def _text_codec(name: str | None) -> str | None:
    """The Python codec for a charset name, if it is one that turns bytes into text."""
    if not name:
        return None
    try:
        info = codecs.lookup(name.strip())
    except Exception:   # LookupError, but also ValueError/TypeError for names with NULs etc.
        return None
    if not getattr(info, "_is_text_encoding", True):
        return None     # "base64", "zlib", "rot13"...: known to codecs, but not charsets
    return info.name


def _parsed(message: Message, fallback: str) -> ParsedMessage:
    first = _first_headers(message)
    from_name, from_addr = _address(first.get("from", ""), fallback)
    parts = list(_walk(message))
    plain, html, unused = _sort_parts(parts)
    # LF line breaks and no trailing blank lines, as for sent_text: the platform gets one style.
    html_text = (_scrub(_LINE_BREAK.sub("\n", _part_text(html, fallback))).strip()
                 if html is not None else None)
    text = _clean_text(_part_text(plain, fallback)) if plain is not None else ""
    if not text and html_text is not None:
        text = html_to_text(html_text)
    return ParsedMessage(
        subject=_header_text(first.get("subject", ""), fallback),
        text=text,
        html=html_text,
        from_addr=from_addr,
        from_name=from_name,
        headers={name: _header_text(value, fallback) for name, value in first.items()
                 if name.startswith("x-pulse-")},
        auto_submitted=_header_text(first.get("auto-submitted", ""), fallback).lower(),
        dropped_attachments=tuple(_describe(part, fallback) for part in unused),
        # Counted last: decoding a payload (bad base64, say) adds defects of its own.
        defects=sum(len(part.defects) for part in parts),
    )


def _unparsed(raw: bytes, fallback: str) -> ParsedMessage:
    sections = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)
    body = sections[-1] if len(sections) == 2 else raw
    return ParsedMessage(subject="", text=_clean_text(decode_bytes(body, None, fallback)),
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
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    data = payload if isinstance(payload, bytes) else b""
    return decode_bytes(data, charset if isinstance(charset, str) else None, fallback)


def _describe(part: Message, fallback: str) -> str:
    return _filename(part, fallback) or _content_type(part)


def _filename(part: Message, fallback: str) -> str:
    # Not part.get_filename(): it turns raw 8-bit names (1C writes them in CP1251) into U+FFFD.
    headers = _first_headers(part)
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
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
    return _one_line(_decode_words(_unfolded(value, fallback), fallback))


def _address(value: str, fallback: str) -> tuple[str, str]:
    """Display name and addr-spec of an address header."""
    name, addr = parseaddr(_unfolded(value[:_MAX_PARSED_HEADER], fallback))
    return _one_line(_decode_words(name, fallback)), _one_line(addr)


def _unfolded(value: str, fallback: str) -> str:
    """The header value on one line, with raw 8-bit bytes (no RFC 2047) decoded as text."""
    value = _LINE_BREAK.sub("", value)
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


# --- text cleanup ----------------------------------------------------------------------------

def _scrub(text: str) -> str:
    """No NULs and no lone surrogates: neither survives the trip to the HTTP API."""
    return _SURROGATE.sub("\ufffd", text.replace("\x00", ""))


def _one_line(text: str) -> str:
    return " ".join(_scrub(_CONTROL.sub("", _LINE_BREAK.sub(" ", text))).split())


def _clean_text(text: str) -> str:
    text = _scrub(_CONTROL.sub("", _LINE_BREAK.sub("\n", text)))
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


# --- HTML ------------------------------------------------------------------------------------

# Line breaks around block elements: 2 leaves a blank line, 1 starts a new line.
_BLOCKS = {
    **dict.fromkeys(("p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "hr"), 2),
    **dict.fromkeys(("div", "li", "tr", "table", "ul", "ol", "section", "article", "header",
                     "footer", "main", "nav", "aside", "dl", "dt", "dd", "center"), 1),
}
_HIDDEN = frozenset(("head", "title", "script", "style", "template"))
_HEAD_ONLY = frozenset(("meta", "link", "base", "title", "style", "script", "noscript"))
_MAX_INDENT = 4   # nesting levels of lists shown by indentation
_HTML_SPACE = re.compile(r"[ \t\n\r\f]+")
_TAG = re.compile(r"<[^<>]*>")
_LONE_LT = re.compile(r"<(?=[^<>]*(?:<|\Z))")


def html_to_text(html: str) -> str:
    """Readable plain text of an HTML document; never raises."""
    extractor = _TextExtractor()
    try:
        extractor.feed(_defuse(html))
        extractor.close()
        text = extractor.text()
    except Exception:
        # html.parser still raises on some malformed declarations ("<![foo"): strip tags crudely.
        text = " ".join(unescape(_TAG.sub(" ", html)).split())
    return _BLANK_LINES.sub("\n\n", _clean_text(text))


def _defuse(html: str) -> str:
    """Escape each "<" that cannot begin a complete tag (no ">" before the next "<").

    For every such "<", html.parser rescans the rest of the document: "<a <a <a ..." of a few
    hundred kilobytes takes hours. It would show these as text anyway. Comments are kept
    whole, since they may hold tags.
    """
    pieces: list[str] = []
    pos = 0
    while (start := html.find("<!--", pos)) >= 0 and (end := html.find("-->", start + 4)) >= 0:
        pieces += (_LONE_LT.sub("&lt;", html[pos:start]), html[start:end + 3])
        pos = end + 3
    pieces.append(_LONE_LT.sub("&lt;", html[pos:]))
    return "".join(pieces)


def _is_web_link(href: str) -> bool:
    return href.lower().startswith(("http://", "https://"))


def _same_link(label: str, href: str) -> bool:
    def bare(url: str) -> str:
        url = url.strip().lower()
        for prefix in ("https://", "http://", "www."):
            url = url.removeprefix(prefix)
        return url.rstrip("/")
    return bare(label) == bare(href)


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._breaks = 0           # line breaks owed before the next text
        self._line_start = True
        self._bullet = ""         # a list item's "- ", written with its first text
        self._hidden: list[str] = []
        self._pre = 0
        self._lists = 0
        self._link: tuple[str, int] | None = None   # href and where its text starts

    def text(self) -> str:
        self._close_link()
        return "".join(self._out)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # A <head> or <title> left open ends where body content begins, as in browsers.
        if tag == "body" or (self._hidden == ["head"] and tag not in _HEAD_ONLY):
            self._hidden.clear()
        if tag in _HIDDEN and tag not in self._hidden:
            self._hidden.append(tag)
        if self._hidden:
            return
        if tag == "br":
            self._breaks += 1
        self._block(tag, opening=True)
        if tag == "pre":
            self._pre += 1
        elif tag in ("ul", "ol"):
            self._lists += 1
        elif tag == "li":
            self._bullet = "  " * min(max(self._lists - 1, 0), _MAX_INDENT) + "- "
        elif tag in ("td", "th"):
            self._space()
        elif tag == "a":
            self._close_link()   # links do not nest: a new one ends the last, as in browsers
            href = next((value for name, value in attrs if name == "href"), None) or ""
            self._link = (href.strip(), len(self._out))

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            if tag in self._hidden:
                del self._hidden[self._hidden.index(tag):]
            return
        if self._hidden:
            return
        if tag == "pre":
            self._pre = max(self._pre - 1, 0)
        elif tag in ("ul", "ol"):
            self._lists = max(self._lists - 1, 0)
        elif tag == "a":
            self._close_link()
        self._block(tag, opening=False)

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        text = data.replace("\xa0", " ")
        self._write(text if self._pre else _HTML_SPACE.sub(" ", text))

    def _close_link(self) -> None:
        if self._link is None:
            return
        href, start = self._link
        self._link = None
        if not _is_web_link(href):
            return
        label = " ".join("".join(self._out[start:]).split())
        if not label:
            self._write(href)
        elif not _same_link(label, href):
            self._write(f" ({href})")

    def _block(self, tag: str, *, opening: bool) -> None:
        # "<li><p>item</p></li>" should not leave the bullet alone on its line.
        if tag in _BLOCKS and not (opening and self._bullet and tag != "li"):
            self._breaks = max(self._breaks, _BLOCKS[tag])

    def _space(self) -> None:
        if not self._line_start and not self._breaks and not self._out[-1].endswith(" "):
            self._out.append(" ")

    def _write(self, text: str) -> None:
        starting = self._line_start or self._breaks > 0
        if not self._pre and (starting or self._out[-1].endswith(" ")):
            text = text.lstrip(" ")
        if not text:
            return
        if self._breaks and self._out:
            self._out.append("\n" * self._breaks)
        self._out.append(self._bullet + text)
        self._breaks, self._bullet = 0, ""
        self._line_start = text.endswith("\n")
