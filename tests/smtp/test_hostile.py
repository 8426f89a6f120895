"""Hostile input: each gets a precise reply or a timeout, and the mail beside it is unharmed."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.spool.packing import load_texts, unpack_request
from tests.conftest import Running, text_message
from tests.fakeplatform import FakePlatform
from tests.spool.statements import run_sql

Start = Callable[..., Awaitable[Running]]
HEADERS = b"From: a@corp.test\r\nSubject: hostile\r\n"


def session(host: str, port: int, payload: bytes, replies_wanted: int) -> list[bytes]:
    """Send a whole pipelined session at once; the final reply lines (code and text) back."""
    finals: list[bytes] = []
    with socket.create_connection((host, port), timeout=20) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(payload)
        while len(finals) < replies_wanted:
            line = reader.readline()
            if not line:
                break
            if line[3:4] != b"-":
                finals.append(line.rstrip(b"\r\n"))
    return finals


def envelope(*recipients: str) -> bytes:
    return (
        b"EHLO c.test\r\nMAIL FROM:<a@corp.test>\r\n"
        + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in recipients)
        + b"DATA\r\n"
    )


async def test_smuggling_with_bare_lf_stays_inside_one_message(
    gw: Running, platform: FakePlatform
) -> None:
    smuggled = (
        HEADERS + b"\r\nfirst\n.\nMAIL FROM:<evil@x.test>\nRCPT TO:<79009999999@sms.local>"
        b"\nDATA\nsmuggled\n.\r\nstill first\r\n\r.\r\nend\r\n.\r\nQUIT\r\n"
    )
    finals = await asyncio.to_thread(
        session, gw.host, gw.port, envelope("79001234567@sms.local") + smuggled, 6
    )
    assert [line[:9] for line in finals] == [
        b"250 HELP",
        b"250 2.1.0",
        b"250 2.1.5",
        b"354 End d",
        b"250 2.0.0",
        b"221 2.0.0",
    ]
    [request] = await platform.wait_for(1)
    assert request.form["sent_to"] == "79001234567"
    assert "smuggled" in request.form["sent_text"]  # text of the one message, not a second
    stored = await run_sql(gw.sqlite, "SELECT recipient FROM deliveries")
    assert stored == [("79001234567@sms.local",)]


async def test_commands_before_ehlo_and_bogus_commands(gw: Running) -> None:
    payload = (
        b"MAIL FROM:<a@corp.test>\r\nRCPT TO:<79001234567@sms.local>\r\nDATA\r\n"
        b"AUTH PLAIN AGFAYg==\r\nSTARTTLS\r\n\x00\x00\r\nMAIL\x00FROM:<a@b>\r\n"
    )
    finals = await asyncio.to_thread(session, gw.host, gw.port, payload, 7)
    assert [line[:9] for line in finals] == [
        b"503 5.5.1",
        b"503 5.5.1",
        b"503 5.5.1",
        b"503 5.5.1",
        b"454 4.7.0",
        b"500 5.5.2",
        b"500 5.5.2",
    ]


async def test_ten_thousand_recipients(gw: Running, platform: FakePlatform) -> None:
    recipients = [f"7900{n:07d}@sms.local" for n in range(10_000)]
    payload = envelope(*recipients) + HEADERS + b"\r\nmany\r\n.\r\nQUIT\r\n"
    finals = await asyncio.to_thread(session, gw.host, gw.port, payload, 10_006)
    codes = [line[:9] for line in finals]
    assert codes[2:7] == [b"250 2.1.5"] * 5  # max_recipients is 5
    assert set(codes[7:10_002]) == {b"452 4.5.3"}
    assert codes[10_002:] == [b"354 End d", b"250 2.0.0", b"221 2.0.0"]
    assert len(await platform.wait_for(5)) == 5


async def test_huge_header_line_nul_bytes_and_bad_utf8(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway({"smtp": {"max_message_size": "2MiB"}})
    huge = b"X-Long: " + b"a" * (1024 * 1024) + b"\r\n"
    body = (
        HEADERS + huge + b"Content-Type: text/plain; charset=no-such-charset\r\n\r\n"
        b"nul\x00byte \xff\xfe not utf-8 =?utf-8?B?!!!?= =?koi8-r?Q?=FF=?=\r\n.\r\n"
    )
    finals = await asyncio.to_thread(
        session, gw.host, gw.port, envelope("79001234567@sms.local") + body + b"QUIT\r\n", 6
    )
    assert finals[4][:9] == b"250 2.0.0"
    [request] = await platform.wait_for(1)
    assert "\x00" not in request.form["sent_text"] and "nul" in request.form["sent_text"]

    too_big = HEADERS + b"X-Long: " + b"a" * (3 * 1024 * 1024) + b"\r\n\r\nx\r\n.\r\n"
    finals = await asyncio.to_thread(
        session, gw.host, gw.port, envelope("79001234567@sms.local") + too_big, 5
    )
    assert finals[4] == b"552 5.3.4 Message size exceeds fixed maximum message size"

    bad_addresses = (
        b"EHLO c.test\r\nMAIL FROM:<\xff\xfe@corp.test>\r\n"
        b"MAIL FROM:<a\x00b@corp.test>\r\nMAIL FROM:<a@corp.test>\r\n"
        b"RCPT TO:<7900\x001234567@sms.local>\r\n"
        b"RCPT TO:<79001234567@sms.local>\r\n"
    )
    finals = await asyncio.to_thread(session, gw.host, gw.port, bad_addresses, 6)
    assert finals[1:] == [
        b"553 5.1.3 Malformed address",
        b"553 5.1.3 Malformed address",
        b"250 2.1.0 Sender ok",
        b"553 5.1.3 Malformed address",
        b"250 2.1.5 Recipient ok",
    ]
    assert len(platform.requests) == 1


async def test_malformed_mime_is_answered_and_survived(gw: Running, platform: FakePlatform) -> None:
    nested = b"".join(
        f'Content-Type: multipart/mixed; boundary="b{n}"\r\n\r\n--b{n}\r\n'.encode()
        for n in range(100)
    )
    unterminated = (
        b'Content-Type: multipart/alternative; boundary="zz"\r\n\r\n--zz\r\n'
        b"Content-Type: text/plain\r\n\r\nunterminated part\r\n"
    )
    for shape in (nested + b"Content-Type: text/plain\r\n\r\ndeep\r\n", unterminated):
        finals = await asyncio.to_thread(
            session,
            gw.host,
            gw.port,
            envelope("79001234567@sms.local") + HEADERS + shape + b".\r\nQUIT\r\n",
            6,
        )
        assert finals[4][:9] in (b"250 2.0.0", b"550 5.6.0"), finals[4]
        assert finals[5][:3] == b"221"
    await gw.send(text_message("normal"), "79007654321@sms.local")
    sent = await platform.wait_for(3)
    assert "79007654321" in [r.form["sent_to"] for r in sent]


# --- generated abuse --------------------------------------------------------------------------

_COMMANDS = st.sampled_from(
    [
        b"EHLO x",
        b"HELO x",
        b"MAIL FROM:<a@corp.test>",
        b"MAIL FROM:<>",
        b"RCPT TO:<79001234567@sms.local>",
        b"RCPT TO:<x@nowhere.test>",
        b"RCPT TO:<7(900)1@sms.local>",
        b"DATA",
        b"RSET",
        b"NOOP",
        b"AUTH PLAIN",
        b"AUTH LOGIN",
        b"STARTTLS",
        b"VRFY a",
        b"HELP",
        b"BDAT 10",
        b"",
    ]
)
_JUNK = st.binary(max_size=300).map(lambda b: b.replace(b"\r\n", b"\n"))
_LINES = st.lists(
    st.one_of(_COMMANDS, _JUNK, _COMMANDS.map(lambda c: c + b" \x00\xff")), max_size=12
)
_BODIES = st.one_of(
    st.binary(max_size=2000),
    st.lists(
        st.sampled_from(
            [
                b"Subject: =?utf-8?B?",
                b"Content-Type: multipart/mixed; boundary=",
                b"\r\n--",
                b"\r\n\r\n",
                b"=?koi8-r?Q?=FF?=",
                b"\n.\n",
                b"\r.\r",
                b"Content-Transfer-Encoding: base64",
                b"\xff\x00",
                b"text",
            ]
        ),
        max_size=30,
    ).map(b"".join),
)


def _abuse(host: str, port: int, lines: list[bytes], body: bytes) -> None:
    """Throw a session at the server; whatever it answers, it must answer in SMTP."""
    payload = (
        b"\r\n".join(lines)
        + b"\r\n"
        + body.replace(b"\r\n.\r\n", b"\r\n..\r\n")
        + b"\r\n.\r\nQUIT\r\n"
    )
    with socket.create_connection((host, port), timeout=20) as sock:
        reader = sock.makefile("rb")
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        while line := reader.readline():
            assert line[:3].isdigit() and line[3:4] in (b" ", b"-"), line


async def test_generated_abuse_never_breaks_the_server(gw: Running, platform: FakePlatform) -> None:
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(lines=_LINES, body=_BODIES)
    def abuse(lines: list[bytes], body: bytes) -> None:
        _abuse(gw.host, gw.port, lines, body)

    await asyncio.to_thread(abuse)
    # A normal client is still answered correctly afterwards...
    queue_id = await gw.submit(text_message("still here"), "79005550000@sms.local")
    assert await gw.wait_final(queue_id) == ["sent"]
    # ... and whatever was accepted could be parsed: each stored message has deliveries whose
    # number is one of the recipients a session named, with text to send.
    rows = await run_sql(
        gw.sqlite,
        "SELECT d.request, m.texts FROM deliveries d JOIN messages m ON m.id = d.message_id",
    )
    for request, texts in rows:
        fields = unpack_request(request, load_texts(texts))
        assert fields["sent_to"] in ("79001234567", "79005550000")
        assert fields["sent_text"].strip()
