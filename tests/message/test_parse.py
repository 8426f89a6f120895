"""Tests for gateway.parse: raw e-mail bytes in, the gateway's view of the message out."""

from __future__ import annotations

import base64
import dataclasses
import logging
import quopri
from email.message import EmailMessage

import pytest

from gateway.message.headers import decode_bytes
from gateway.message.htmltext import html_to_text
from gateway.message.parse import ParsedMessage, parse_message

BODY = "Привет, мир!\nЁлка и ёж: 100%\nвторая строка"


def raw(*headers: str | bytes, body: bytes = b"") -> bytes:
    """A message from header lines and a body, with CRLF line ends as on the wire."""
    lines = [h.encode("ascii") if isinstance(h, str) else h for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def encoded_word(text: str, charset: str, encoding: str) -> str:
    data = text.encode(charset)
    if encoding == "B":
        payload = base64.b64encode(data).decode("ascii")
    else:
        payload = quopri.encodestring(data, header=True).decode("ascii")
    return f"=?{charset}?{encoding}?{payload}?="


def crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


# --- bodies and charsets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "label, codec",
    [
        ("utf-8", "utf-8"),
        ("windows-1251", "cp1251"),
        ("koi8-r", "koi8-r"),
        ("iso-8859-5", "iso-8859-5"),
    ],
)
@pytest.mark.parametrize("transfer", ["8bit", "quoted-printable", "base64"])
def test_body_in_each_charset_and_transfer_encoding(label: str, codec: str, transfer: str) -> None:
    data = crlf(BODY).encode(codec)
    if transfer == "quoted-printable":
        data = quopri.encodestring(data)
    elif transfer == "base64":
        data = base64.encodebytes(data)
    message = parse_message(
        raw(
            "Subject: test",
            "MIME-Version: 1.0",
            f"Content-Type: text/plain; charset={label}",
            f"Content-Transfer-Encoding: {transfer}",
            body=data,
        )
    )
    assert message.text == BODY
    assert message.html is None
    assert message.dropped_attachments == ()
    assert message.defects == 0


@pytest.mark.parametrize("charset", ["windows-1251", "koi8-r"])
@pytest.mark.parametrize("encoding", ["B", "Q"])
def test_rfc2047_subject(charset: str, encoding: str) -> None:
    subject = "Счёт № 5 оплачен" if charset == "windows-1251" else "Счёт 5 оплачен"
    message = parse_message(raw(f"Subject: {encoded_word(subject, charset, encoding)}", body=b"x"))
    assert message.subject == subject


def test_rfc2047_words_mixed_with_plain_text_and_folded() -> None:
    first = encoded_word("Привет,", "utf-8", "B")
    second = encoded_word("мир", "koi8-r", "Q")
    message = parse_message(raw(f"Subject: Re: {first}\r\n\t{second} [#42]", body=b"x"))
    assert message.subject == "Re: Привет,мир [#42]"


def test_rfc2047_character_split_between_words() -> None:
    data = "Ёж".encode()  # four bytes, cut inside the first character
    words = [f"=?utf-8?B?{base64.b64encode(chunk).decode()}?=" for chunk in (data[:1], data[1:])]
    message = parse_message(raw("Subject: " + " ".join(words), body=b"x"))
    assert message.subject == "Ёж"


@pytest.mark.parametrize("codec", ["utf-8", "cp1251"])
def test_raw_8bit_subject(codec: str) -> None:
    message = parse_message(raw(b"Subject: " + "Отчёт за май".encode(codec), body=b"x"))
    assert message.subject == "Отчёт за май"


def test_legacy_cp1251_message_without_mime_headers() -> None:
    # What 1C and friends send: no MIME-Version, no Content-Type, raw 8-bit CP1251 everywhere.
    message = parse_message(
        raw(
            b"From: 1c@example.ru",
            b"To: 79001234567@sms.local",
            b"Subject: " + "Заказ готов".encode("cp1251"),
            body=crlf(BODY).encode("cp1251"),
        )
    )
    assert message.subject == "Заказ готов"
    assert message.text == BODY
    assert message.from_addr == "1c@example.ru"


def test_fallback_charset_is_configurable() -> None:
    message = parse_message(raw(body="Привет".encode("koi8-r")), fallback_charset="koi8-r")
    assert message.text == "Привет"


@pytest.mark.parametrize("charset", ["x-unknown", "bogus-charset", "base64", "utf-8\x00"])
def test_unknown_charset_is_treated_as_undeclared(charset: str) -> None:
    header = f'Content-Type: text/plain; charset="{charset}"'.encode("ascii", "replace")
    assert parse_message(raw(header, body="Привет".encode())).text == "Привет"
    assert parse_message(raw(header, body="Привет".encode("cp1251"))).text == "Привет"


def test_us_ascii_label_on_8bit_text_is_ignored() -> None:
    message = parse_message(
        raw("Content-Type: text/plain; charset=us-ascii", body="Привет".encode("cp1251"))
    )
    assert message.text == "Привет"


def test_utf16_body() -> None:
    message = parse_message(
        raw(
            "Content-Type: text/plain; charset=utf-16",
            "Content-Transfer-Encoding: base64",
            body=base64.encodebytes("Привет".encode("utf-16")),
        )
    )
    assert message.text == "Привет"


@pytest.mark.parametrize(
    "data, declared, expected",
    [
        ("Привет".encode("koi8-r"), "koi8-r", "Привет"),
        ("Привет".encode("cp1251"), "windows-1251", "Привет"),
        ("Привет".encode(), None, "Привет"),
        ("Привет".encode("cp1251"), None, "Привет"),
        ("Привет".encode("cp1251"), "no-such-charset", "Привет"),
        ("Привет".encode("cp1251"), "", "Привет"),
        ("\ufeffПривет".encode(), "utf-8", "Привет"),
        (b"caf\xc3", "utf-8", "caf\ufffd"),
        (b"\xff", "idna", "я"),
        (b"", None, ""),
    ],
)
def test_decode_bytes(data: bytes, declared: str | None, expected: str) -> None:
    assert decode_bytes(data, declared, "cp1251") == expected


def test_decode_bytes_with_unknown_fallback_charset() -> None:
    assert decode_bytes(b"caf\xe9", None, "no-such-charset") == "caf\ufffd"


def test_text_normalisation() -> None:
    body = b"\r\n  \r\nfirst line   \r\nsecond\tline\x00\x07\rthird\nfourth  \r\n\r\n \r\n"
    assert parse_message(raw(body=body)).text == "first line\nsecond\tline\nthird\nfourth"


def test_subject_normalisation() -> None:
    message = parse_message(raw("Subject:   Line\tone\r\n   and\x00 two  ", body=b"x"))
    assert message.subject == "Line one and two"


def test_message_without_subject_or_body() -> None:
    message = parse_message(raw("From: a@example.com"))
    assert (message.subject, message.text, message.html) == ("", "", None)


# --- structure -------------------------------------------------------------------------------


def alternative(plain: str, html: str) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = "Новости"
    message["From"] = "Shop <shop@example.com>"
    message.set_content(plain)
    message.add_alternative(html, subtype="html")
    return message


def test_multipart_alternative_prefers_plain_and_keeps_html() -> None:
    message = parse_message(bytes(alternative("Простой текст", "<p>Текст <b>HTML</b></p>")))
    assert message.subject == "Новости"
    assert message.text == "Простой текст"
    assert message.html == "<p>Текст <b>HTML</b></p>"
    assert message.dropped_attachments == ()


def test_blank_plain_alternative_falls_back_to_html() -> None:
    message = parse_message(bytes(alternative("  \n", "<p>Текст <b>HTML</b></p>")))
    assert message.text == "Текст HTML"


def test_html_only_message() -> None:
    html = (
        "<html><head><title>Title</title><style>p { color: red }</style></head><body>"
        "<h1>Заказ&nbsp;№&nbsp;5</h1><p>Сумма:   1&nbsp;000 &#8381; &amp; доставка</p>"
        "<script>alert('x')</script><ul><li>Хлеб</li><li>Молоко</li></ul>"
        '<p>Подробнее <a href="https://shop.example/o/5">на сайте</a>.</p></body></html>'
    )
    message = parse_message(
        raw(
            "Content-Type: text/html; charset=utf-8",
            "Content-Transfer-Encoding: quoted-printable",
            body=quopri.encodestring(html.encode()),
        )
    )
    assert message.text == (
        "Заказ № 5\n\nСумма: 1 000 ₽ & доставка\n\n- Хлеб\n- Молоко\n\n"
        "Подробнее на сайте (https://shop.example/o/5)."
    )
    assert message.html == html


def test_mixed_with_attachments() -> None:
    message = EmailMessage()
    message.set_content("См. вложение")
    message.add_attachment(
        b"%PDF-1.4", maintype="application", subtype="pdf", filename="отчёт за май.pdf"
    )
    message.add_attachment("secret text", filename="notes.txt")
    message.add_attachment(b"\x89PNG", maintype="image", subtype="png")
    forwarded = EmailMessage()
    forwarded["Subject"] = "inner"
    forwarded.set_content("forwarded body")
    message.add_attachment(forwarded)
    parsed = parse_message(bytes(message))
    assert parsed.text == "См. вложение"
    assert parsed.dropped_attachments == (
        "отчёт за май.pdf",
        "notes.txt",
        "image/png",
        "message/rfc822",
    )
    assert parsed.html is None


def test_nested_mixed_related_alternative() -> None:
    body = raw(
        'Content-Type: multipart/mixed; boundary="outer"',
        body=crlf(
            "--outer\n"
            'Content-Type: multipart/related; boundary="rel"\n\n'
            "--rel\n"
            'Content-Type: multipart/alternative; boundary="alt"\n\n'
            "--alt\n"
            "Content-Type: text/plain; charset=koi8-r\n"
            "Content-Transfer-Encoding: base64\n\n"
            + base64.b64encode("Текст письма".encode("koi8-r")).decode()
            + "\n"
            "--alt\n"
            "Content-Type: text/html; charset=utf-8\n\n"
            '<p>Текст письма <img src="cid:logo"></p>\n'
            "--alt--\n"
            "--rel\n"
            "Content-Type: image/gif\n"
            'Content-Disposition: inline; filename="logo.gif"\n'
            "Content-Transfer-Encoding: base64\n\n"
            "R0lGODlh\n"
            "--rel--\n"
            "--outer\n"
            "Content-Type: text/plain; charset=utf-8\n"
            'Content-Disposition: attachment; filename="log.txt"\n\n'
            "not the body\n"
            "--outer--\n"
        ).encode(),
    )
    message = parse_message(body)
    assert message.text == "Текст письма"
    assert message.html == '<p>Текст письма <img src="cid:logo"></p>'
    assert message.dropped_attachments == ("logo.gif", "log.txt")


@pytest.mark.parametrize("codec", ["utf-8", "cp1251"])
def test_raw_8bit_attachment_name(codec: str) -> None:
    name = "Отчёт.pdf".encode(codec)
    message = parse_message(
        raw(
            b'Content-Type: multipart/mixed; boundary="b"',
            body=(
                b"--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n--b\r\n"
                b'Content-Type: application/pdf; name="' + name + b'"\r\n\r\n%PDF\r\n--b--\r\n'
            ),
        )
    )
    assert message.dropped_attachments == ("Отчёт.pdf",)


def test_attached_text_is_not_the_body() -> None:
    message = EmailMessage()
    message.set_content("<p>Только HTML</p>", subtype="html")
    message.add_attachment("attached text", filename="a.txt")
    parsed = parse_message(bytes(message))
    assert parsed.text == "Только HTML"
    assert parsed.dropped_attachments == ("a.txt",)


def test_pulse_headers_are_collected() -> None:
    ttl = encoded_word("30", "utf-8", "B")
    message = parse_message(
        raw(
            "X-Pulse-TTL: 15",
            f"x-pulse-ttl: {ttl}",
            "X-PULSE-Send-Date:  2024-05-01 10:00 ",
            "X-Pulse-Name: " + encoded_word("Иван", "koi8-r", "Q"),
            "X-Other: ignored",
            "X-Pulsar: ignored",
            body=b"x",
        )
    )
    assert message.headers == {
        "x-pulse-ttl": "15",
        "x-pulse-send-date": "2024-05-01 10:00",
        "x-pulse-name": "Иван",
    }


@pytest.mark.parametrize(
    "header, name, addr",
    [
        (
            "From: " + encoded_word("Иван Петров", "windows-1251", "B") + " <ivan@example.ru>",
            "Иван Петров",
            "ivan@example.ru",
        ),
        (
            'From: "' + encoded_word("Иван", "utf-8", "Q") + '" <ivan@example.ru>',
            "Иван",
            "ivan@example.ru",
        ),
        ('From: "Petrov, Ivan" <ivan@example.ru>', "Petrov, Ivan", "ivan@example.ru"),
        ("From: ivan@example.ru (Ivan)", "Ivan", "ivan@example.ru"),
        ("From: ivan@example.ru", "", "ivan@example.ru"),
        ("From: ", "", ""),
        ("X-No-From: x", "", ""),
    ],
)
def test_from(header: str, name: str, addr: str) -> None:
    message = parse_message(raw(header, body=b"x"))
    assert (message.from_name, message.from_addr) == (name, addr)


def test_raw_8bit_from_name() -> None:
    message = parse_message(raw(b"From: " + "Бухгалтерия".encode("cp1251") + b" <buh@x.ru>"))
    assert (message.from_name, message.from_addr) == ("Бухгалтерия", "buh@x.ru")


@pytest.mark.parametrize(
    "header, expected",
    [
        ("Auto-Submitted: Auto-Replied", "auto-replied"),
        ("Auto-Submitted: auto-generated; type=x", "auto-generated; type=x"),
        ("Subject: no header", ""),
    ],
)
def test_auto_submitted(header: str, expected: str) -> None:
    assert parse_message(raw(header, body=b"x")).auto_submitted == expected


def test_parsed_message_is_immutable() -> None:
    message = parse_message(raw(body=b"x"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.text = "y"  # type: ignore[misc]


# --- robustness ------------------------------------------------------------------------------


def nested_multipart(depth: int) -> bytes:
    head = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(depth)
    )
    tail = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    return b"Subject: deep\r\n" + head + b"Content-Type: text/plain\r\n\r\ndeep text" + tail


HOSTILE = {
    "empty": b"",
    "nul bytes": b"\x00" * 1000,
    "binary": bytes(range(256)) * 64,
    "1 MB subject": b"Subject: " + b"A" * 1_000_000 + b"\r\n\r\nbody",
    "1 MB content-type": b"Content-Type: text/plain; " + b"a=b;" * 250_000 + b"\r\n\r\nbody",
    "1 MB from": b"From: " + b"a," * 500_000 + b"\r\n\r\nbody",
    "unterminated boundary": raw(
        'Content-Type: multipart/mixed; boundary="zz"',
        body=b"--zz\r\nContent-Type: text/plain\r\n\r\nhello",
    ),
    "multipart without boundary": raw("Content-Type: multipart/mixed", body=b"hello"),
    "100 deep": nested_multipart(100),
    "1000 deep": nested_multipart(1000),
    "invalid base64": raw("Content-Transfer-Encoding: base64", body=b"!!!%%%\r\n===\r\n"),
    "invalid quoted-printable": raw(
        "Content-Transfer-Encoding: quoted-printable", body=b"=ZZ=\r\n=4"
    ),
    "garbage encoded words": raw(
        "Subject: =?bogus?Q?x?= =?utf-8?B?!!!?= =?utf-8?Q?=ZZ?=",
        "From: =?utf-8?B?!!!?= <a@b>",
        body=b"x",
    ),
    "unicode-escape charset": raw(
        'Content-Type: text/plain; charset="unicode-escape"', body=b"\\ud800 \\x"
    ),
    "rfc2231 garbage charset": raw("Content-Type: text/plain; charset*=bogus''%ff%fe", body=b"x"),
    "broken html": raw("Content-Type: text/html", body=b"<![foo <a <b href='x" * 1000),
    "header without value": b"Subject\r\nFrom:\r\n:\r\n\r\nbody",
    "only headers": b"Subject: x",
    "8bit garbage filename": raw(
        'Content-Type: multipart/mixed; boundary="b"',
        body=b"--b\r\nContent-Type: application/x\r\n"
        b'Content-Disposition: attachment; filename="\xff\x00"'
        b"\r\n\r\nx\r\n--b--\r\n",
    ),
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_never_raises(data: bytes) -> None:
    logging.disable(logging.WARNING)  # the 1000-deep case logs its parser traceback
    try:
        message = parse_message(data)
    finally:
        logging.disable(logging.NOTSET)
    assert isinstance(message, ParsedMessage)
    assert "\x00" not in message.text + message.subject + "".join(message.dropped_attachments)


def test_hostile_inputs_degrade_to_the_expected_text() -> None:
    assert parse_message(HOSTILE["empty"]).text == ""
    assert parse_message(HOSTILE["nul bytes"]).text == ""
    assert parse_message(HOSTILE["1 MB subject"]).subject == "A" * 1_000_000
    assert parse_message(HOSTILE["1 MB content-type"]).text == "body"
    assert parse_message(HOSTILE["unterminated boundary"]).text == "hello"
    assert parse_message(HOSTILE["multipart without boundary"]).text == "hello"
    assert parse_message(HOSTILE["100 deep"]).text == "deep text"
    assert parse_message(HOSTILE["invalid base64"]).defects >= 1
    garbage = parse_message(HOSTILE["garbage encoded words"])
    assert garbage.subject == "x =?utf-8?B?!!!?= =ZZ"  # bad Q escapes stay literal
    assert (garbage.from_name, garbage.from_addr) == ("=?utf-8?B?!!!?=", "a@b")
    assert parse_message(HOSTILE["8bit garbage filename"]).dropped_attachments == ("я",)


def test_too_deep_for_the_parser_keeps_headers() -> None:
    logging.disable(logging.WARNING)
    try:
        message = parse_message(HOSTILE["1000 deep"])
    finally:
        logging.disable(logging.NOTSET)
    assert message.subject == "deep"
    assert message.defects >= 1
    assert message.text.startswith('--b0\nContent-Type: multipart/mixed; boundary="b1"')


def test_a_bug_while_parsing_still_gives_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> ParsedMessage:
        raise RuntimeError("bug")

    # Both paths: the message is simple enough for the fast one, and its bug must not lose it.
    monkeypatch.setattr("gateway.message.parse._parsed", broken)
    monkeypatch.setattr("gateway.message.parse._simple_parsed", broken)
    logging.disable(logging.WARNING)
    try:
        message = parse_message(raw("Subject: x", body="Тело\r\n".encode("cp1251")))
    finally:
        logging.disable(logging.NOTSET)
    assert (message.subject, message.text, message.defects) == ("", "Тело", 1)


# --- html_to_text ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "html, expected",
    [
        ("<p>one</p><p>two</p>", "one\n\ntwo"),
        ("<div>one</div><div>two</div>", "one\ntwo"),
        ("a<br>b<br><br><br><br><br>c", "a\nb\n\nc"),
        ("<p>a</p><br><br><p></p><div></div><p>b</p>", "a\n\nb"),
        ("  lots   of\n\twhite   space  ", "lots of white space"),
        ("<pre>  keep\n    this </pre>after", "  keep\n    this\n\nafter"),
        ("&lt;tag&gt; &amp; &#1071; &#x42F; &quot;q&quot; a&nbsp;&nbsp;b", '<tag> & Я Я "q" a b'),
        ("<ol><li>one<li>two</ol>", "- one\n- two"),
        ("<ul><li>a<ul><li>b</li></ul></li><li><p>c</p></li></ul>", "- a\n  - b\n- c"),
        ("<table><tr><td>a</td><td>b</td></tr><tr><th>c</th><td> d</td></tr></table>", "a b\nc d"),
        ("x<hr>y", "x\n\ny"),
        ("<h2>Title</h2>text<blockquote>quote</blockquote>", "Title\n\ntext\n\nquote"),
        (
            "<section>s</section><article>a</article><header>h</header><footer>f</footer>",
            "s\na\nh\nf",
        ),
        ("<head><title>t</title><style>x</style></head><body>only this</body>", "only this"),
        ("<head><title>unclosed<body>shown", "shown"),
        ("<head><meta charset=utf-8><p>no body tag</p>", "no body tag"),
        ("a<script>if (a < b) { x() }</script>b<style>p{}</style>c", "abc"),
        (
            '<a href="https://x.example/p?q=1&amp;r=2">here</a>',
            "here (https://x.example/p?q=1&r=2)",
        ),
        ('<a href="https://x.example/">https://x.example</a>', "https://x.example"),
        ('<a href="http://www.x.example">x.example</a>', "x.example"),
        ('<a href="mailto:a@b.example">write</a>', "write"),
        ('<a href="/relative">rel</a>', "rel"),
        ('<a href="https://x.example/"><img src="logo.png"></a>', "https://x.example/"),
        (
            '<a href="https://a.example">a<a href="https://b.example">b',
            "a (https://a.example)b (https://b.example)",
        ),
        ("a\x00b\x01c", "abc"),
        ("<![foo bar]><p>x</p>", "x"),
        ("", ""),
    ],
)
def test_html_to_text(html: str, expected: str) -> None:
    assert html_to_text(html) == expected


@pytest.mark.parametrize(
    "html",
    [
        "<a " * 70_000,  # html.parser is quadratic on unclosed tags
        "<a b='" * 40_000,
        "</" * 100_000,
        "<!--" * 50_000,
        "<ul>" * 50_000 + "<li>x" * 1000,
        '<a href="https://x">y' * 10_000 + "</a>" * 10_000,
        "<title>" * 30_000 + "</title>" * 30_000,
    ],
)
def test_html_to_text_hostile_input_is_fast(html: str) -> None:
    assert isinstance(html_to_text(html), str)


def test_html_to_text_caps_list_indentation() -> None:
    assert html_to_text("<ul>" * 20 + "<li>deep") == "        - deep"
