"""Input that costs CPU to read (issue 11, items 1, 3 and 8): the attacker gets its answer, and
another client is served while the attack runs instead of waiting for the event loop."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.config.loader import parse_config
from gateway.errors import ConfigError
from gateway.message.headers import decode_bytes
from gateway.message.parse import parse_message
from gateway.message.prepare import listing
from tests.conftest import Running, text_message
from tests.fakeplatform import FakePlatform

Start = Callable[..., Awaitable[Running]]
LARGE = {"smtp": {"max_message_size": "2MiB"}}
HEAD = b"From: a@corp.test\r\nSubject: hostile\r\nMIME-Version: 1.0\r\n"
# What the second client may wait while an attack runs. Each attack here held the event loop
# (and so every client) for 6 to 13 s before the fix; a served client takes milliseconds.
PATIENCE = 2.0


def finals_of(host: str, port: int, payload: bytes) -> list[bytes]:
    """Send a whole pipelined session at once; every final reply line until the server hangs up."""
    finals: list[bytes] = []
    with socket.create_connection((host, port), timeout=60) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(payload)
        for line in reader:
            if line[3:4] != b"-":
                finals.append(line.rstrip(b"\r\n"))
    return finals


def envelope(recipient: str = "79001234567@sms.local") -> bytes:
    return (
        b"EHLO c.test\r\nMAIL FROM:<a@corp.test>\r\n"
        + f"RCPT TO:<{recipient}>\r\n".encode()
        + b"DATA\r\n"
    )


async def attack_and_probe(gw: Running, payload: bytes) -> tuple[list[bytes], float]:
    """Run the attack on one connection; while it runs, a second client sends one ordinary
    message. The attack's replies and how long the second client's whole session took."""
    replies: list[list[bytes]] = []
    sent = threading.Event()

    def attack() -> None:
        with socket.create_connection((gw.host, gw.port), timeout=60) as sock:
            reader = sock.makefile("rb")
            reader.readline()
            sock.sendall(payload)
            sent.set()
            replies.append([line.rstrip(b"\r\n") for line in reader if line[3:4] != b"-"])

    attacker = asyncio.create_task(asyncio.to_thread(attack))
    assert await asyncio.to_thread(sent.wait, 30)
    await asyncio.sleep(0.3)  # the gateway has read the attack and is working on it
    started = time.monotonic()
    await gw.send(text_message("second client", "meanwhile"), "79007654321@sms.local")
    waited = time.monotonic() - started
    await attacker
    return replies[0], waited


# --- item 1: a phone pattern that backtracked exponentially --------------------------------


async def test_rcpt_that_backtracked_is_refused_at_once_and_others_are_served(
    gw: Running, platform: FakePlatform
) -> None:
    payload = (
        b"EHLO c.test\r\nMAIL FROM:<a@corp.test>\r\nRCPT TO:<"
        + b"1" * 28
        + b"x@sms.local>\r\nQUIT\r\n"
    )
    started = time.monotonic()
    finals, waited = await attack_and_probe(gw, payload)
    assert finals[2].startswith(b"553 5.1.3 "), finals
    assert b"is not a phone number" in finals[2]
    assert time.monotonic() - started < 10  # 28 digits backtracked for 11 s
    assert waited < PATIENCE
    [request] = await platform.wait_for(1)
    assert request.form["sent_to"] == "79007654321"


@pytest.mark.parametrize(
    "local",
    ["1" * 60 + "x", "1-" * 100 + "x", "+" + "1." * 100, "1" * 200 + "-", "1" * 200 + "+"],
    ids=["digits-x", "groups-x", "trailing-dot", "trailing-dash", "plus"],
)
async def test_long_hostile_phone_local_parts_get_a_precise_refusal(
    gw: Running, local: str
) -> None:
    started = time.monotonic()
    mail, (code, text) = await gw.dialog("MAIL FROM:<a@corp.test>", f"RCPT TO:<{local}@sms.local>")
    assert mail[0] == 250
    assert (code, text[:5]) == (553, b"5.1.3")
    assert time.monotonic() - started < PATIENCE


def test_phone_pattern_accepts_exactly_what_it_did() -> None:
    # The old, backtracking form is safe on short input; both must agree on every string of
    # these characters up to this length.
    from gateway.config.recipients import _PHONE

    old = re.compile(r"^\+?[0-9]+(?:[.-]*[0-9]+)*$")
    for length in range(8):
        for chars in itertools.product("1.-+x\n", repeat=length):
            local = "".join(chars)
            assert bool(_PHONE.match(local)) == bool(old.match(local)), local


# --- item 3: a quadratic codec ---------------------------------------------------------------


async def test_punycode_body_does_not_stall_other_clients(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway(LARGE)
    body = b"a" * 800_000
    payload = (
        envelope()
        + HEAD
        + b"Content-Type: text/plain; charset=punycode\r\n\r\n"
        + body
        + b"\r\n.\r\nQUIT\r\n"
    )
    finals, waited = await attack_and_probe(gw, payload)
    assert finals[-2].startswith(b"250 2.0.0 Ok: queued as "), finals
    assert waited < PATIENCE
    requests = await platform.wait_for(2)
    hostile = next(r for r in requests if r.form["sent_text"].startswith("hostile"))
    # Not a charset mail uses: the body is read as undeclared text (UTF-8 here).
    assert hostile.form["sent_text"] == "hostile\n" + "a" * 800_000


@pytest.mark.parametrize(
    "charset", ["punycode", "unicode-escape", "idna", "base64", "rot13", "utf-32", "x" * 5000]
)
def test_only_mail_charsets_are_decoded(charset: str) -> None:
    assert decode_bytes(b"caf\xc3\xa9 \\x41", charset, "cp1251") == "café \\x41"
    assert decode_bytes(b"caf\xe9", charset, "cp1251") == "cafй"


@pytest.mark.parametrize(
    ("charset", "data", "text"),
    [
        ("windows-1251", "Привет".encode("cp1251"), "Привет"),
        ("koi8-r", "Привет".encode("koi8-r"), "Привет"),
        ("ISO-8859-5", "Привет".encode("iso-8859-5"), "Привет"),
        ("cp866", "Привет".encode("cp866"), "Привет"),
        ("utf-16", "Привет".encode("utf-16"), "Привет"),
        ("iso-2022-jp", "日本語".encode("iso-2022-jp"), "日本語"),
        ("gb18030", "中文".encode("gb18030"), "中文"),
    ],
)
def test_the_charsets_mail_is_written_in_still_decode(charset: str, data: bytes, text: str) -> None:
    assert decode_bytes(data, charset, "utf-8") == text


def test_fallback_charset_outside_the_list_is_refused_naming_its_key() -> None:
    data: dict[str, Any] = {
        "api": {"token": "t"},
        "domains": {"sms.local": {"type": "sms"}},
        "smtp": {"fallback_charset": "punycode"},
    }
    with pytest.raises(ConfigError) as error:
        parse_config(data, env={})
    assert error.value.problems == [
        "smtp.fallback_charset: 'punycode' is not a charset mail is written in "
        "(e.g. cp1251, koi8-r, iso-8859-5, utf-8)"
    ]


# --- item 8: other shapes that are slow to parse ---------------------------------------------


async def test_megabyte_content_type_does_not_stall_other_clients(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway(LARGE)
    params = b"".join(b';\r\n p%d="v"' % n for n in range(1_500_000 // 14))
    payload = (
        envelope()
        + HEAD
        + b"Content-Type: text/plain; charset=koi8-r"
        + params
        + b"\r\n\r\n"
        + "Привет".encode("koi8-r")
        + b"\r\n.\r\nQUIT\r\n"
    )
    finals, waited = await attack_and_probe(gw, payload)
    assert finals[-2].startswith(b"250 2.0.0 Ok: queued as "), finals
    assert waited < PATIENCE
    requests = await platform.wait_for(2)
    assert "hostile\nПривет" in [r.form["sent_text"] for r in requests]


async def test_many_empty_parts_do_not_stall_others_nor_flood_the_log(
    start_gateway: Start, platform: FakePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start_gateway(LARGE)
    caplog.set_level(logging.INFO, logger="smtp2pulse")
    parts = b"--b\r\nContent-Type: text/plain\r\n\r\nthe body\r\n"
    parts += b'--b\r\nContent-Type: application/pdf; name="invoice.pdf"\r\n\r\n%PDF\r\n'
    parts += b"--b\r\n\r\n" * 120_000 + b"--b--\r\n"
    payload = (
        envelope()
        + HEAD
        + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        + parts
        + b".\r\nQUIT\r\n"
    )
    finals, waited = await attack_and_probe(gw, payload)
    assert finals[-2].startswith(b"250 2.0.0 Ok: queued as "), finals
    assert waited < PATIENCE
    requests = await platform.wait_for(2)
    assert "hostile\nthe body" in [r.form["sent_text"] for r in requests]
    [note] = [r.getMessage() for r in caplog.records if "attachments not sent" in r.getMessage()]
    assert len(note) < 1000
    assert re.search(
        r"attachments not sent: invoice\.pdf(, text/plain){9} and 119991 more$", note
    ), note


def test_dropped_parts_are_named_up_to_a_limit_and_counted_beyond() -> None:
    attachments = b"".join(
        b'--b\r\nContent-Type: application/pdf; name="f%d.pdf"\r\n\r\nx\r\n' % n for n in range(30)
    )
    raw = (
        HEAD
        + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nbody\r\n'
        + attachments
        + b"--b--\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.text == "body"
    assert parsed.dropped_attachments == tuple(f"f{n}.pdf" for n in range(20))
    assert parsed.more_dropped == 10
    assert listing(parsed.dropped_attachments, parsed.more_dropped) == (
        "f0.pdf, f1.pdf, f2.pdf, f3.pdf, f4.pdf, f5.pdf, f6.pdf, f7.pdf, f8.pdf, f9.pdf and 20 more"
    )


def test_long_names_are_cut_in_a_listing() -> None:
    assert listing(["a" * 500, "b"]) == "a" * 99 + "…, b"
    assert listing([]) == ""


async def test_many_ignored_override_headers_make_a_short_note(
    gw: Running, platform: FakePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtp2pulse")
    headers = b"".join(b"X-Pulse-H%d: v\r\n" % n for n in range(2000))
    payload = envelope() + HEAD + headers + b"\r\nbody\r\n.\r\nQUIT\r\n"
    finals = await asyncio.to_thread(finals_of, gw.host, gw.port, payload)
    assert finals[-2].startswith(b"250 2.0.0"), finals
    [note] = [r.getMessage() for r in caplog.records if "not allowed for" in r.getMessage()]
    assert len(note) < 500
    assert note.endswith("and 1990 more not allowed for sms.local, ignored")
