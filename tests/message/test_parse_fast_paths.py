"""The parser's shortcuts around the email package give exactly what the email package gives."""

from __future__ import annotations

from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import parseaddr

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.message.headers import _split_address
from gateway.message.mime import charset as _charset
from gateway.message.mime import structure as _structure

# --- the structure -------------------------------------------------------------------------


def summary(message: Message | str) -> object:
    """Everything the parser decided about a message, comparable with ==."""
    if isinstance(message, str):  # a part left as text: itself
        return message
    payload = message.get_payload()
    return (
        message.get_unixfrom(),
        list(message.raw_items()),
        message.preamble,
        message.epilogue,
        [type(defect) for defect in message.defects],
        [summary(part) for part in payload] if isinstance(payload, list) else payload,
    )


def multipart(size: int, newline: str) -> bytes:
    """A multipart whose lines straddle the parser's 8192-character reads near `size`."""
    filler = ("x" * 70 + newline) * (size // 72) + "y" * (size % 72)
    return (
        f"Content-Type: multipart/mixed; boundary=b{newline}{newline}--b{newline}"
        f"Content-Type: text/plain{newline}{newline}{filler}{newline}--b{newline}"
        f"Content-Type: text/html{newline}{newline}<p>\xff</p>{newline}--b--{newline}"
    ).encode("latin-1")


@pytest.mark.parametrize(
    "raw",
    [
        *(multipart(size, newline) for size in range(8000, 8300, 7) for newline in ("\r\n", "\n")),
        b"Subject: x\r\n\r\n" + b"a" * 8175 + b"\r\n" + b"b" * 9000,
        b"Subject: x\r\n" + b"X-Long: " + b"z" * 20000 + b"\r\n\r\nbody",
        b"",
        b"\r\n",
        b"no headers at all",
        b"From nobody Mon Jan  1 00:00:00 2024\nSubject: s\n\nb",
    ],
)
def test_structure_is_bytes_parser(raw: bytes) -> None:
    assert summary(_structure(raw)) == summary(BytesParser(policy=compat32).parsebytes(raw))


@settings(max_examples=300)
@given(
    st.lists(
        st.sampled_from(
            [
                b"Content-Type: multipart/alternative; boundary=q",
                b"--q",
                b"--q--",
                b"Subject: \xd0\x96",
                b"",
                b"text \xff",
                b" folded",
                b"Content-Type: message/rfc822",
                b"From: a@b",
                b"\r",
            ]
        ),
        max_size=40,
    ),
    st.sampled_from([b"\r\n", b"\n", b"\r"]),
    st.integers(0, 9000),
)
def test_structure_is_bytes_parser_on_random_mail(
    lines: list[bytes], newline: bytes, padding: int
) -> None:
    raw = newline.join(lines[:3]) + newline + b"p" * padding + newline.join(lines[3:])
    assert summary(_structure(raw)) == summary(BytesParser(policy=compat32).parsebytes(raw))


# --- From: -----------------------------------------------------------------------------------

ADDRESS_CHARS = "aZ9_.@<>\"(),;:[]\\ \t!#$%&'*+/=?^`{|}~-Жё\xa0\u2028"
words = st.text(st.sampled_from("aZ9_.!#$%&'*+/=?^`{|}~-Жё\""), min_size=0, max_size=6)
# Mostly near-miss variants of the usual `Name <local@domain>` and `local@domain`.
shaped_addresses = st.builds(
    lambda name, spaces, local, domain, angle: (
        f"{spaces.join(name)}{spaces if name else ''}<{local}@{domain}>"
        if angle
        else f"{local}@{domain}"
    ),
    st.lists(words, max_size=3),
    st.sampled_from([" ", "  ", "\t", ""]),
    words,
    words,
    st.booleans(),
)


@settings(max_examples=2000)
@given(st.one_of(shaped_addresses, st.text(st.sampled_from(ADDRESS_CHARS)), st.text()))
def test_split_address_is_parseaddr(value: str) -> None:
    assert _split_address(value) == parseaddr(value)


@pytest.mark.parametrize(
    "value",
    [
        "CRM Robot <crm@corp.example>",
        "crm@corp.example",
        "<a@b>",
        "Иван Петров <a@b.c>",
        "=?utf-8?B?0JfQsA==?= <a@b.c>",
        "a..b@c",
        "a@b.",
        "A  B <c@d>",
        "J. Smith <j@s.example>",
        '"Ivanov, Ivan" <i@x.example>',
        "a@b <c@d>",
        "x <a@b> (comment)",
        "a@b, c@d",
        "",
    ],
)
def test_split_address_examples(value: str) -> None:
    assert _split_address(value) == parseaddr(value)


# --- Content-Type charset ----------------------------------------------------------------------

CONTENT_TYPE_CHARS = "aZ9/;=\"' \t*%_.:+-\\()ſ\u212aЖ"
params = st.text(st.sampled_from(CONTENT_TYPE_CHARS), max_size=12)
shaped_content_types = st.builds(
    lambda kind, space, name, quote, value, tail: (
        f"{kind};{space}{name}={quote}{value}{quote}{tail}"
    ),
    st.sampled_from(["text/plain", "TEXT/HTML ", "text/", "text", "multipart/mixed"]),
    st.sampled_from(["", " ", "  ", "\t"]),
    st.sampled_from(["charset", "CharSet", "charset*", "charſet", "charset ", "name"]),
    st.sampled_from(["", '"', "'"]),
    params,
    st.sampled_from(["", ";", "; format=flowed", '"']),
)


def part_with(content_type: str) -> Message:
    raw = b"Content-Type: " + content_type.encode("utf-8", "surrogateescape") + b"\r\n\r\nx"
    return BytesParser(policy=compat32).parsebytes(raw)


def stdlib_charset(content_type: str) -> str | None:
    try:
        charset = part_with(content_type).get_content_charset()
    except Exception:
        return None
    return charset if isinstance(charset, str) else None


@settings(max_examples=2000)
@given(st.one_of(shaped_content_types, params, st.text()))
def test_charset_is_get_content_charset(content_type: str) -> None:
    assert _charset(part_with(content_type)) == stdlib_charset(content_type)


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/plain; charset=UTF-8", "utf-8"),
        ('text/plain; charset="windows-1251"', "windows-1251"),
        ("text/plain;charset=koi8-r", "koi8-r"),
        ('text/plain; charset="utf-8', '"utf-8'),
        ("text/plain; charset*=utf-8''koi8-r", "koi8-r"),
        ("text/plain; charſet=koi8-r", None),
        ("text/plain", None),
    ],
)
def test_charset_examples(content_type: str, expected: str | None) -> None:
    assert stdlib_charset(content_type) == expected
    assert _charset(part_with(content_type)) == expected


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain; charſet=koi8-r",
        "text/plain; CHARSET=KOI8-R",
        "text/plain; charset=\u212aoi8",
    ],
)
def test_charset_of_a_header_set_as_text(content_type: str) -> None:
    # Headers parsed from bytes are ASCII here; one set as str may hold any character.
    part = Message()
    part["Content-Type"] = content_type
    assert _charset(part) == part.get_content_charset()
