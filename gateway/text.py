"""Plain-text hygiene shared by the parser and the request builder."""

from __future__ import annotations

import re

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")
SURROGATE = re.compile(r"[\ud800-\udfff]")
LINE_BREAK = re.compile(r"\r\n|\r|\n")


def scrub(text: str) -> str:
    """No NULs and no lone surrogates: neither survives the trip to the HTTP API."""
    return SURROGATE.sub("\ufffd", text.replace("\x00", ""))


def one_line(text: str) -> str:
    return " ".join(scrub(CONTROL.sub("", LINE_BREAK.sub(" ", text))).split())


def clean_text(text: str) -> str:
    """LF line breaks, no control characters, no trailing whitespace, no blank edges."""
    text = scrub(CONTROL.sub("", LINE_BREAK.sub("\n", text)))
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")
