"""Header values and bytes as text: charsets, RFC 2047 encoded words, addresses.

Total, like the rest of parsing: a value that does not decode stays as it is, bytes in no
charset they claim are read as UTF-8 or the fallback charset.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from email.utils import parseaddr

from gateway.config.charsets import mail_codec
from gateway.message.text import one_line

# The stdlib header parser and address parser are quadratic in a header's length; the headers
# they see here (MIME structure, From) are never legitimately longer than this. A file name of
# 255 Cyrillic letters, percent-encoded in RFC 2231 form, is about 1.5 KB of it.
MAX_PARSED_HEADER = 8192
# The headers parse keeps for gateway.message.schedule (lower-case names): it reads the mail's own
# timing and urgency from them.
TIMING_HEADERS = frozenset(
    {
        "deferred-delivery",
        "expires",
        "expiry-date",
        "x-priority",
        "importance",
        "priority",
        "x-msmail-priority",
    }
)

# RFC 2047: =?charset[*lang]?B|Q?text?= where text is printable ASCII other than "?".
_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([!->@-~]*)\?=")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
# The usual From: forms, `Display Name <local@domain>` and `local@domain`, for which parseaddr
# (about a twentieth of an accept) is sure to return (name words joined by one space, address).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*"
_PLAIN_ADDRESS = re.compile(rf"((?:[\w!#$%&'*+/=?^`{{|}}~-]+ )*)<({_ADDR_SPEC})>|({_ADDR_SPEC})")


def decode_bytes(data: bytes, declared: str | None, fallback_charset: str) -> str:
    """Bytes as text: the declared charset if mail uses it, else UTF-8, else the fallback."""
    codec = mail_codec(declared)
    if codec == "ascii" and not data.isascii():
        codec = None  # legacy mailers label raw 8-bit text "us-ascii"
    if codec is not None:
        # Should a codec refuse errors="replace", the text is treated as undeclared.
        with contextlib.suppress(Exception):
            return data.decode(codec, "replace").removeprefix("\ufeff")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return data.decode(mail_codec(fallback_charset) or "utf-8", "replace")


def header_text(value: str, fallback: str) -> str:
    return one_line(_decode_words(unfolded(value, fallback), fallback))


def address(value: str, fallback: str) -> tuple[str, str]:
    """Display name and addr-spec of an address header."""
    name, addr = _split_address(unfolded(value[:MAX_PARSED_HEADER], fallback))
    return one_line(_decode_words(name, fallback)), one_line(addr)


def _split_address(value: str) -> tuple[str, str]:
    """parseaddr(value), without running its parser on the usual forms."""
    plain = _PLAIN_ADDRESS.fullmatch(value)
    if plain is None:
        return parseaddr(value)
    if plain[3] is not None:
        return "", plain[3]
    return plain[1][:-1], plain[2]


def unfolded(value: str, fallback: str) -> str:
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
        gap = text[end : match.start()]
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
