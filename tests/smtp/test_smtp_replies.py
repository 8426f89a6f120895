"""Every reply code the contract names, as a real SMTP client sees it."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import socket
from collections.abc import Awaitable, Callable

import pytest

from gateway.smtp.admission import LOGGED_RCPT_REFUSALS
from tests.conftest import Running, eventually, text_message
from tests.fakeplatform import FakePlatform
from tests.spool.statements import run_sql


async def rcpt_reply(gw: Running, address: str) -> tuple[int, bytes]:
    [_mail, rcpt] = await gw.dialog("MAIL FROM:<app@corp.test>", f"RCPT TO:<{address}>")
    return rcpt


async def test_unknown_domain_is_550_5_7_1_never_relayed(
    gw: Running, platform: FakePlatform
) -> None:
    code, text = await rcpt_reply(gw, "someone@gmail.com")
    assert (code, text[:6]) == (550, b"5.7.1 ")
    assert b"gmail.com" in text


@pytest.mark.parametrize(
    "address",
    [
        "not-a-number@sms.local",
        "12345@sms.local",  # too short
        "1234567890123456@sms.local",  # too long
        '"7900 1234567"@sms.local',  # quoted
        "7900+1234567@sms.local",  # + only in front
        "7(900)1234567@sms.local",  # a comment inside the digits
        "79001234567(22)@sms.local",  # digits in a trailing comment
        "(note)79001234567@sms.local",
        "noequals@mail.local",  # email domain needs user=example.com
    ],
)
async def test_bad_local_part_is_553_5_1_3(gw: Running, address: str) -> None:
    code, text = await rcpt_reply(gw, address)
    assert (code, text[:6]) == (553, b"5.1.3 ")


async def test_domain_is_case_insensitive(gw: Running, platform: FakePlatform) -> None:
    await gw.send(text_message(), "79001234567@SMS.Local")
    [request] = await platform.wait_for(1)
    assert request.form["sent_to"] == "79001234567"


async def test_too_many_recipients_is_452_4_5_3(gw: Running, platform: FakePlatform) -> None:
    rcpts = [f"RCPT TO:<7900123456{i}@sms.local>" for i in range(6)]
    replies = await gw.dialog("MAIL FROM:<app@corp.test>", *rcpts)
    assert [code for code, _ in replies[1:6]] == [250] * 5
    assert replies[6][0] == 452 and replies[6][1].startswith(b"4.5.3 ")


async def test_size_declared_at_mail_is_552_5_3_4(gw: Running) -> None:
    [mail] = await gw.dialog("MAIL FROM:<app@corp.test> SIZE=999999")
    assert mail[0] == 552 and mail[1].startswith(b"5.3.4 ")


async def test_too_large_after_data_is_552_5_3_4(gw: Running, platform: FakePlatform) -> None:
    def run() -> tuple[int, bytes]:
        with gw.client() as client:
            client.mail("app@corp.test")  # no SIZE=: the size shows only in DATA
            client.rcpt("79001234567@sms.local")
            return client.data(text_message(body="x" * 70_000).as_bytes())

    code, text = await asyncio.to_thread(run)
    assert (code, text[:6]) == (552, b"5.3.4 ")
    await gw.send(text_message("small"), "79001234567@sms.local")  # the session goes on
    [request] = await platform.wait_for(1)
    assert request.form["sent_text"] == "small\nWorld"


async def test_long_html_lines_are_accepted(gw: Running, platform: FakePlatform) -> None:
    # Real HTML mail has lines far longer than RFC 5321's 1000 octets.
    line = "<td>" + "cell " * 4000 + "</td>"
    raw = (
        "From: a@corp.test\r\nSubject: wide\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"\r\n<table><tr>{line}</tr></table>\r\n"
    ).encode()
    await gw.send(raw, "79001234567@sms.local")
    [request] = await platform.wait_for(1)
    assert request.form["sent_text"].startswith("wide\ncell cell")


async def test_network_not_allowed_is_554_5_7_1(
    start_gateway: Callable[..., Awaitable[Running]],
) -> None:
    gw = await start_gateway({"smtp": {"allow_networks": ["10.0.0.0/8", "::1/128"]}})

    def connect() -> bytes:
        with socket.create_connection((gw.host, gw.port), timeout=5) as sock:
            return sock.makefile("rb").readline()

    greeting = await asyncio.to_thread(connect)
    assert greeting.startswith(b"554 5.7.1 ")


async def test_allowed_network_is_served(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway({"smtp": {"allow_networks": ["127.0.0.0/8"]}})
    await gw.send(text_message(), "79001234567@sms.local")
    await platform.wait_for(1)


async def test_spool_that_cannot_store_answers_451_4_3_0(
    gw: Running, platform: FakePlatform
) -> None:
    spool = gw.sqlite
    # A real SQLITE_FULL: cap the database at the pages it already has.
    [(pages,)] = await run_sql(spool, "PRAGMA page_count")
    await run_sql(spool, f"PRAGMA max_page_count={pages}")
    big = text_message(body="payload " * 2000)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await gw.send(big, "79001234567@sms.local")
    assert refused.value.smtp_code == 451
    error = refused.value.smtp_error
    assert isinstance(error, bytes) and error.startswith(b"4.3.0 ")
    await run_sql(spool, "PRAGMA max_page_count=1073741823")
    await gw.send(text_message("after"), "79001234567@sms.local")
    [request] = await platform.wait_for(1)
    assert request.form["sent_text"] == "after\nWorld"  # the refused one never reached it


async def test_shutdown_says_421_4_3_2_to_idle_sessions(gw: Running) -> None:
    sock = await asyncio.to_thread(socket.create_connection, (gw.host, gw.port), 5)
    reader = sock.makefile("rb")
    try:
        assert (await asyncio.to_thread(reader.readline)).startswith(b"220 ")
        sock.sendall(b"EHLO client.test\r\n")
        while not (await asyncio.to_thread(reader.readline)).startswith(b"250 "):
            pass
        await gw.gateway.stop()
        assert (await asyncio.to_thread(reader.readline)).startswith(b"421 4.3.2 ")
    finally:
        reader.close()
        sock.close()


async def test_new_connections_are_refused_after_stop(gw: Running) -> None:
    await gw.gateway.stop()
    with pytest.raises(OSError):
        await asyncio.to_thread(socket.create_connection, (gw.host, gw.port), 2)


async def test_empty_and_odd_addresses_get_syntax_replies(
    start_gateway: Callable[..., Awaitable[Running]],
) -> None:
    gw = await start_gateway({"smtp": {"null_sender": "accept"}})  # refused by default
    replies = await gw.dialog(
        "MAIL FROM:", "MAIL FROM:<>", "RCPT TO:", "RCPT TO:<>", "RCPT TO:79001234567@sms.local"
    )
    assert [code for code, _ in replies] == [501, 250, 501, 553, 250]
    assert all(text[:1] in b"25" and text[1:2] == b"." for _, text in replies)


async def test_protocol_errors_carry_enhanced_codes(gw: Running) -> None:
    replies = await gw.dialog(
        "RCPT TO:<79001234567@sms.local>",
        "BOGUS",
        "DATA",
        "MAIL FROM:<a@b.c>",
        "MAIL FROM:<a@b.c>",
        "NOOP",
        "RSET",
    )
    assert [(code, text.split(b" ", 1)[0]) for code, text in replies] == [
        (503, b"5.5.1"),
        (500, b"5.5.2"),
        (503, b"5.5.1"),
        (250, b"2.1.0"),
        (503, b"5.5.1"),
        (250, b"2.0.0"),
        (250, b"2.0.0"),
    ]


async def test_unexpected_error_reply_is_temporary_and_hides_the_exception() -> None:
    from gateway.smtp.handler import Handler

    reply = await Handler.handle_exception(None, RuntimeError("secret detail"))  # type: ignore[arg-type]
    assert str(reply) == "451 4.3.0 Internal error, try again later"


async def test_pipelined_commands_are_answered_in_order(
    gw: Running, platform: FakePlatform
) -> None:
    def run() -> list[bytes]:
        with socket.create_connection((gw.host, gw.port), timeout=5) as sock:
            reader = sock.makefile("rb")
            reader.readline()
            sock.sendall(b"EHLO c.test\r\n")
            while not reader.readline().startswith(b"250 "):
                pass
            sock.sendall(
                b"MAIL FROM:<a@corp.test>\r\nRCPT TO:<79001234567@sms.local>\r\n"
                b"RCPT TO:<x@gmail.com>\r\nRCPT TO:<79007654321@sms.local>\r\n"
                b"DATA\r\n"
            )
            replies = [reader.readline() for _ in range(5)]
            sock.sendall(b"Subject: piped\r\n\r\nbody\r\n.\r\nQUIT\r\n")
            replies += [reader.readline(), reader.readline()]
            return [line[:9] for line in replies]

    assert await asyncio.to_thread(run) == [
        b"250 2.1.0",
        b"250 2.1.5",
        b"550 5.7.1",
        b"250 2.1.5",
        b"354 End d",
        b"250 2.0.0",
        b"221 2.0.0",
    ]
    requests = await platform.wait_for(2)
    assert sorted(r.form["sent_to"] for r in requests) == ["79001234567", "79007654321"]


@pytest.mark.parametrize(
    "arg",
    [
        "<79001234567@sms.local>",
        "<a.b+c@x.y> SIZE=100 BODY=8BITMIME",
        " <+7-900-123-45-67@sms.local>",
        "<ivan=example.com@mail.local>",
        "<a@b>",
    ],
)
def test_fast_address_path_agrees_with_the_rfc_parser(arg: str) -> None:
    from email._header_value_parser import get_angle_addr

    from gateway.smtp.addresses import precheck

    parsed, rest = get_angle_addr(arg)
    assert precheck(arg) == (parsed.addr_spec, rest)


@pytest.mark.parametrize(
    "arg",
    [
        "<>",
        "<a..b@c>",
        '<"q r"@b>',
        "<a@b.c(x)>",
        "<@route:a@b.c>",
        "a@b.c",
        "<a@b.c>x",
        "<адрес@пример.рф>",
    ],
)
def test_unusual_addresses_take_the_full_parser(arg: str) -> None:
    from gateway.smtp.addresses import _SIMPLE_ADDRESS

    assert _SIMPLE_ADDRESS.fullmatch(arg) is None


def test_every_named_reply_says_how_it_is_counted() -> None:
    from gateway.smtp import replies

    named = [v for v in vars(replies).values() if isinstance(v, replies.Reply)]
    assert len(named) >= 40
    for reply in named:
        # A refusal without a reason would vanish from the dashboard; a 250 with one would
        # count as a refusal.
        assert (reply.reason is not None) == (reply.code >= 400), reply
        assert reply.enhanced.startswith(str(reply.code)[0]) or reply.code == 354, reply


def test_every_kind_of_refusal_has_its_reply() -> None:
    from gateway import errors
    from gateway.smtp.replies import reply_for

    kinds = errors.Refusal.__subclasses__()
    assert kinds
    for kind in kinds:
        refusal = kind() if kind is errors.TooManyTexts else kind("why")
        # A limit's refusal alone is temporary: the client is to try again later.
        codes = ("452",) if kind is errors.LimitReached else ("550", "552", "553")
        assert str(reply_for(refusal))[:3] in codes


@pytest.mark.parametrize("invisible", ["\u200b", "\u202e", "\u2066", "\ufeff", "\u00ad"])
async def test_a_verbatim_recipient_with_an_invisible_character_is_refused(
    gw: Running, invisible: str
) -> None:
    """Issue 29 (low): an id with U+200B or U+202E looks like another one everywhere."""
    replies = await gw.dialog(
        "MAIL FROM:<app@corp.test>",
        f"RCPT TO:<user{invisible}42@push.local>",
        "RCPT TO:<user42@push.local>",
    )
    code, text = replies[1]
    assert (code, text[:6]) == (553, b"5.1.3 "), replies
    assert f"(U+{ord(invisible):04X})".encode() in text
    assert replies[2][0] == 250


async def test_refused_recipients_are_logged_a_few_then_counted(
    gw: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 29 (low): a line per refused RCPT let one client write 22 MB of log in 150 s."""
    caplog.set_level(logging.INFO, logger="smtp2pulse.smtp")
    replies = await gw.dialog(
        "MAIL FROM:<app@corp.test>", *(f"RCPT TO:<{n}@sms.local>" for n in range(50)), "QUIT"
    )
    assert [code for code, _ in replies[1:51]] == [553] * 50

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "recipient" in r.getMessage()]

    await eventually(lambda: any("more recipients refused" in line for line in lines()))
    assert len(lines()) == LOGGED_RCPT_REFUSALS + 1, lines()
    assert lines()[-1] == (
        "45 more recipients refused from 127.0.0.1 in that session (not logged one by one)"
    )
