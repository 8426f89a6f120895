"""parse_message's fast path for simple mail gives exactly what the FeedParser path gives."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.message.parse import _simple_parsed, _slow, parse_message


def encoded_word(text: str, charset: str, kind: str) -> bytes:
    data = text.encode(charset, "replace")
    if kind == "B":
        payload = base64.b64encode(data)
    else:
        payload = b"".join(
            bytes([c]) if c < 128 and chr(c).isalnum() else b"=%02X" % c for c in data
        )
    return b"=?" + charset.encode() + b"?" + kind.encode() + b"?" + payload + b"?="


TEXT = "Заказ № 4217 готов, ёж"
subjects = st.one_of(
    st.sampled_from(
        [
            b"Hello",
            b"",
            b"  padded  ",
            b"tab\there",
            b"a=?b",
            TEXT.encode("utf-8"),
            TEXT.encode("cp1251"),
            TEXT.encode("koi8-r", "replace"),
            b"nul\x00and\x01ctl",
            b"=?utf-8?B?bad*?=",
            b"=?x-unknown?Q?a?=",
        ]
    ),
    st.builds(
        encoded_word,
        st.sampled_from([TEXT, "plain", "€uro"]),
        st.sampled_from(["utf-8", "koi8-r", "cp1251", "UTF-8"]),
        st.sampled_from(["B", "Q"]),
    ),
)
froms = st.sampled_from(
    [
        b"a@b.example",
        b"CRM Robot <crm@corp.example>",
        b"<crm@corp.example>",
        b'"Ivanov, Ivan" <i@x.example>',
        b"=?utf-8?B?0JfQsA==?= <a@b.c>",
        "Иван <i@x.example>".encode(),
        "Иван <i@x.example>".encode("cp1251"),
        b"broken <",
        b"a@b, c@d",
        b"",
    ]
)
# Half of the time a value the fast path takes, else one near it that it must not.
content_types = st.one_of(
    st.sampled_from(
        [
            b"text/plain",
            b"TEXT/Plain",
            b"text/plain; charset=utf-8",
            b'text/plain; charset="UTF-8"',
            b"text/plain;charset=koi8-r",
            b"text/plain; CharSet=windows-1251",
            b"text/plain; charset=cp1251",
            b"text/plain; charset=us-ascii",
            b"text/plain; charset=bogus",
            b"text/plain; charset=utf-16",
            b"text/plain; charset=idna",
            b"text/plain; charset=base64",
        ]
    ),
    st.sampled_from(
        [
            b'text/plain; charset="utf-8',
            b"text/plain; charset=utf-8 ",
            b"text/plain; format=flowed",
            b"text/plain; charset=utf-8; format=flowed",
            b"text/plain; charset*=utf-8''koi8-r",
            b"text/html; charset=utf-8",
            b"multipart/mixed; boundary=x",
            b"message/rfc822",
            b"text",
            b"",
            b"application/octet-stream",
            b"text/plain; charset=\xff",
            b"text/html",
        ]
    ),
)
encodings = st.one_of(
    st.sampled_from([b"7bit", b"8BIT", b"binary", b"quoted-printable", b"Quoted-Printable"]),
    st.sampled_from([b"base64", b"x-uuencode", b"8bit ", b"", b"bogus", b"\xff"]),
)
pulse_names = st.sampled_from([b"X-Pulse-Type", b"x-pulse-sender", b"X-PULSE-TYPE", b"X-Pulse-Tag"])
other_names = st.sampled_from(
    [
        b"To",
        b"Date",
        b"Message-ID",
        b"X-Mailer",
        b"Received",
        b"Subject",
        b"From",
        b"Auto-Submitted",
        b"MIME-Version",
        b"Content-Type",
        b"Content-Transfer-Encoding",
        b"Content-Disposition",
        b"X-Weird!#$%&'*+-.^_`|~",
        b"1",
    ]
)
values = st.one_of(
    subjects,
    froms,
    content_types,
    encodings,
    st.sampled_from(
        [
            b"auto-generated",
            b"No",
            b"AUTO-REPLIED ",
            b"1.0",
            b"attachment; filename=a.txt",
            b"inline",
        ]
    ),
)


@st.composite
def header_lines(draw: st.DrawFn) -> list[bytes]:
    """Header lines around the simple shape, now and then one that is not."""
    picks = st.one_of(
        st.builds(lambda v: b"Subject: " + v, subjects),
        st.builds(lambda v: b"From: " + v, froms),
        st.builds(lambda n, v: n + b": " + v, pulse_names, values),
        st.builds(lambda v: b"Auto-Submitted: " + v, values),
        st.builds(
            lambda n, sep, v: n + sep + v,
            other_names,
            st.sampled_from([b":", b": ", b":\t", b":  ", b" :"]),
            values,
        ),
    )
    lines = draw(st.lists(picks, max_size=6))
    # The headers that decide the shape, each often present and now and then twice.
    usual, rare = [0, 1, 1, 1, 2], [0, 0, 0, 0, 0, 1, 2]
    for name, strategy, times in (
        (b"Content-Type", content_types, usual),
        (b"Content-Transfer-Encoding", encodings, usual),
        (b"MIME-Version", st.sampled_from([b"1.0", b"1.0 (x)"]), usual),
        (b"Content-Disposition", st.sampled_from([b"attachment; filename=a", b"inline"]), rare),
    ):
        for _ in range(draw(st.sampled_from(times))):
            lines.append(name + draw(st.sampled_from([b": ", b":"])) + draw(strategy))
    lines = list(draw(st.permutations(lines)))
    if draw(st.integers(0, 3)) == 0:
        odd = draw(
            st.sampled_from(
                [
                    b" folded",
                    b"\tfolded",
                    b"From nobody Mon Jan  1",
                    b": x",
                    b"no colon",
                    b"Na me: x",
                    b"\xd0\x96: x",
                    b"X: a\rb",
                ]
            )
        )
        lines.insert(draw(st.integers(0, len(lines))), odd)
    return lines


def encoded(text: str, codec: str) -> bytes:
    return text.encode(codec, "replace")


bodies = st.one_of(
    st.sampled_from(
        [
            b"",
            b"\r\n",
            b"\n",
            b"x",
            b"line\r\n",
            "Привет".encode("koi8-r"),
            TEXT.encode("cp1251", "replace") + b"\r\n",
            TEXT.encode() + b"\r\n\r\n\r\n",
            b"a=3D=D0=96=\r\nb\r\n",
            b"soft=\nbreak",
            b"cr\ronly\r",
            b"nul\x00\x07",
            b"\xef\xbb\xbfbom",
            b"  spaces  \r\n\ttab\r\n",
            b"From me\r\n",
            b"=D0=9F=D1=80=D0=B8=D0=B2=D0=B5=D1=82",
            b"=F0=D2=C9=D7=C5=D4 =\r\n!",
            b"eA==",
            b"0J/RgNC40LLQtdGC\r\n",
            b"<p>html</p>",
            b"begin 644 a\n",
            b"Subject: looks like a header\r\n\r\nbody",
        ]
    ),
    st.builds(
        encoded,
        st.text(st.sampled_from("aZ \t\r\n=\x00\x0b\x1bЖжё€\u2028"), max_size=40),
        st.sampled_from(["utf-8", "cp1251", "koi8-r"]),
    ),
    st.binary(max_size=40),
)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    lines = draw(header_lines())
    newline = draw(st.sampled_from([b"\r\n", b"\n", b"mixed"]))
    ends = [
        draw(st.sampled_from([b"\r\n", b"\n"])) if newline == b"mixed" else newline
        for _ in range(len(lines) + 1)
    ]
    head = b"".join(line + end for line, end in zip(lines, ends, strict=False))
    separator = draw(st.sampled_from([ends[-1]] * 7 + [b"", b"\r", b" \r\n"]))
    return head + separator + draw(bodies)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.sampled_from(["cp1251", "koi8-r", "utf-8", "nonesuch"]))
def test_parse_message_is_the_slow_path(raw: bytes, fallback: str) -> None:
    assert parse_message(raw, fallback) == _slow(raw, fallback)


# --- messages of exactly the fast path's shape ----------------------------------------------

simple_content_types = st.builds(
    lambda kind, space, name, quote, charset: (
        kind + (b";" + space + name + b"=" + quote + charset + quote if charset else b"")
    ),
    st.sampled_from([b"text/plain", b"Text/Plain", b"TEXT/PLAIN"]),
    st.sampled_from([b"", b" ", b"\t ", b"  "]),
    st.sampled_from([b"charset", b"CHARSET"]),
    st.sampled_from([b"", b'"']),
    st.sampled_from(
        [
            b"",
            b"utf-8",
            b"UTF-8",
            b"koi8-r",
            b"windows-1251",
            b"us-ascii",
            b"latin1",
            b"utf-16",
            b"nonesuch",
            b"rot13",
            b"x.y:z_1",
        ]
    ),
)
qp_bodies = st.lists(
    st.one_of(
        st.sampled_from(
            [
                b"=D0=9F",
                b"=F0",
                b"=3D",
                b"=\r\n",
                b"=\n",
                b"=",
                b"=G1",
                b"= \r\n",
                b" ",
                b"\t\r\n",
                b"\r\n",
                b"\n",
                b"\r",
                b"_",
                b"=d0=b6",
                b"=00",
            ]
        ),
        st.binary(max_size=6),
    ),
    max_size=20,
).map(b"".join)


@st.composite
def simple_messages(draw: st.DrawFn) -> bytes:
    lines = draw(
        st.lists(
            st.one_of(
                st.builds(lambda v: b"Subject:" + v, subjects),
                st.builds(lambda v: b"From: " + v, froms),
                st.builds(lambda n, v: n + b": " + v, pulse_names, values),
                st.builds(lambda v: b"Auto-Submitted: " + v, values),
            ),
            max_size=5,
        )
    )
    if draw(st.booleans()):
        lines.append(b"Content-Type: " + draw(simple_content_types))
    if draw(st.booleans()):
        lines.append(
            b"Content-Transfer-Encoding:"
            + draw(
                st.sampled_from(
                    [b"7bit", b" 8bit", b" BINARY", b" quoted-printable", b"\tQuoted-Printable"]
                )
            )
        )
    newline = draw(st.sampled_from([b"\r\n", b"\n"]))
    head = b"".join(line + newline for line in draw(st.permutations(lines)))
    return head + newline + draw(st.one_of(qp_bodies, bodies))


@settings(max_examples=600, deadline=None)
@given(simple_messages(), st.sampled_from(["cp1251", "koi8-r", "utf-8"]))
def test_simple_mail_takes_the_fast_path(raw: bytes, fallback: str) -> None:
    simple = _simple_parsed(raw, fallback)
    assert simple is not None
    assert simple == _slow(raw, fallback)


# --- the fast path is taken for the mail it is for --------------------------------------------

UTF8 = (
    b"From: CRM Robot <crm@corp.example>\r\nTo: 79001234567@sms.local\r\n"
    b"Subject: =?utf-8?B?0JfQsNC60LDQtw==?=\r\nX-Pulse-Type: sms\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    + "Здравствуйте!\r\nЗаказ готов.\r\n".encode()
)
LEGACY = ("From: 1c@example.ru\nSubject: Отчёт за май\n\nПривет,\nмир\n").encode("cp1251")
QP = (
    b'Subject: qp\r\nContent-Type: text/plain; charset="koi8-r"\r\n'
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=F0=D2=C9=D7=C5=D4=\r\n!\r\n"
)


@pytest.mark.parametrize(
    "raw",
    [
        UTF8,
        LEGACY,
        QP,
        b"\r\n",
        b"\n\nbody only",
        b"Subject: x\r\nContent-Type: TEXT/PLAIN\r\n\r\n",
    ],
)
def test_fast_path_is_taken_for_simple_mail(raw: bytes) -> None:
    simple = _simple_parsed(raw, "cp1251")
    assert simple is not None
    assert simple == _slow(raw, "cp1251") == parse_message(raw)


def test_fast_path_examples() -> None:
    parsed = parse_message(UTF8)
    assert (
        parsed.subject,
        parsed.text,
        parsed.from_name,
        parsed.from_addr,
        parsed.headers,
        parsed.defects,
    ) == (
        "Заказ",
        "Здравствуйте!\nЗаказ готов.",
        "CRM Robot",
        "crm@corp.example",
        {"x-pulse-type": "sms"},
        0,
    )
    assert parse_message(LEGACY).subject == "Отчёт за май"
    assert parse_message(QP).text == "Привет!"


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: x\r\n folded\r\n\r\nbody",  # continuation line
        b"Subject: x\r\nbody without a blank line",  # missing separator: a defect
        b"Subject: x",  # no empty line at all
        b"From nobody Mon Jan  1 00:00:00 2024\nSubject: s\n\nb",  # envelope line
        b"Subject: x\r\r\n\r\nbody",  # lone CR in the headers
        b"Subject: x\n\rbody",  # lone CR as the empty line
        b": no name\r\n\r\nbody",  # a defect
        b"Content-Type: text/plain\r\nContent-Type: text/html\r\n\r\nx",  # duplicate structure
        b"MIME-Version: 1.0\r\nMIME-Version: 1.0\r\n\r\nx",
        b"Content-Type: text/html\r\n\r\n<p>x</p>",
        b"Content-Type: text/plain; format=flowed\r\n\r\nx",
        b"Content-Type: text/plain; charset=utf-8 \r\n\r\nx",  # trailing blank
        b"Content-Transfer-Encoding: base64\r\n\r\neA==",
        b"Content-Disposition: attachment; filename=a.txt\r\n\r\nx",
        "Subject: x\r\nЖ: y\r\n\r\nx".encode(),  # 8-bit header name: body
    ],
)
def test_other_mail_takes_the_slow_path(raw: bytes) -> None:
    assert _simple_parsed(raw, "cp1251") is None
    assert parse_message(raw) == _slow(raw, "cp1251")
