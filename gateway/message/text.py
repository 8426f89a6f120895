"""Plain-text hygiene shared by the parser and the request builder.

Every function has a fast path for the common text (no CR, no control characters, no
surrogates), which skips the regex passes that would change nothing; tests/test_text.py pins
each to the slow path's result.
"""

from __future__ import annotations

import re

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")
SURROGATE = re.compile(r"[\ud800-\udfff]")
LINE_BREAK = re.compile(r"\r\n|\r|\n")
# What the regex passes below would change: CR, the other control characters, NUL, surrogates
# (CR is \x0d, so the one search also finds text that still has CRLF line breaks).
_UNUSUAL = re.compile(r"[\x00-\x08\x0b-\x1f\ud800-\udfff]")


def lf(text: str) -> str:
    """LINE_BREAK.sub("\\n", text): CRLF and lone CR as LF, for a third of the regex's cost."""
    if "\r" not in text:
        return text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def scrub(text: str) -> str:
    """No NULs and no lone surrogates: neither survives the trip to the HTTP API."""
    if text.isascii():
        return text.replace("\x00", "")
    return SURROGATE.sub("\ufffd", text.replace("\x00", ""))


def one_line(text: str) -> str:
    if not _UNUSUAL.search(text):
        # Only LF could be replaced, by a space: split() treats both alike.
        return " ".join(text.split())
    return " ".join(scrub(CONTROL.sub("", LINE_BREAK.sub(" ", text))).split())


def clean_text(text: str) -> str:
    """LF line breaks, no control characters, no trailing whitespace, no blank edges."""
    text = lf(text)
    if _UNUSUAL.search(text):
        text = scrub(CONTROL.sub("", text))
    return "\n".join(map(str.rstrip, text.split("\n"))).strip("\n")
