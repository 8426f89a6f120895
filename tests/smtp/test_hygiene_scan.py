"""The header scan for automatic mail gives what the plain regex scan gave."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.smtp import admission

HEADER_END = re.compile(rb"\r?\n\r?\n")


def reference_auto_generated(raw: bytes) -> bool:
    end = HEADER_END.search(raw, 0, admission._HEADER_SCAN_LIMIT)
    head = raw[: end.start() if end else admission._HEADER_SCAN_LIMIT]
    return admission._MARKERS.search(head) is not None


@settings(max_examples=3000)
@given(st.binary(max_size=12).map(lambda b: bytes(b"\r\na:"[x % 4] for x in b)), st.integers(0, 14))
def test_header_end_is_the_regex_search(raw: bytes, limit: int) -> None:
    found = HEADER_END.search(raw, 0, limit)
    assert admission.header_end(raw, limit) == (found.start() if found else limit)


LINES = [
    b"From: a@b.example",
    b"Subject: auto report",
    b"X-Autoreply: yes",
    b"AUTO-SUBMITTED: Auto-Replied",
    b"Auto-Submitted: no",
    b"auto-submitted:no (x)",
    b"Precedence: Auto_Reply",
    b"X-Precedence: bulk",
    b"Content-Type: Multipart/Report",
    b"X-Vacation-Reply: 1",
    b" folded auto-submitted: yes",
    b"",
    b"\r",
    b"x-auto-reply :",
]


@settings(max_examples=3000)
@given(
    st.lists(st.sampled_from(LINES), max_size=8),
    st.sampled_from([b"\r\n", b"\n"]),
    st.binary(max_size=4),
)
def test_auto_generated_is_the_regex_scan(lines: list[bytes], newline: bytes, tail: bytes) -> None:
    raw = newline.join(lines) + tail
    assert admission.auto_generated(raw) == reference_auto_generated(raw)
