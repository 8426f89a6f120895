"""Networks, connection caps, rate limits, session timeouts, mail hygiene, secrets, masking."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gateway.config.loader import parse_config
from gateway.errors import ConfigError
from gateway.privacy import PersonalDataFilter, mask_personal
from gateway.smtp.admission import RateLimiter
from gateway.smtp.auth import LoginFailures
from tests.access_helpers import PASSWORD, replies, users
from tests.conftest import Running, eventually, text_message
from tests.fakeplatform import FakePlatform

Start = Callable[..., Awaitable[Running]]
MINIMAL = {"api": {"token": "t"}, "domains": {"sms.local": {"type": "sms"}}}


def greeting(host: str, port: int) -> bytes:
    """The first line a new connection gets (then it is dropped)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        return sock.makefile("rb").readline()


async def test_networks_not_allowed_get_554_over_ipv4_and_ipv6(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway(
        {
            "smtp": {
                "listen": ["127.0.0.1:0", "[::1]:0"],
                "allow_networks": ["10.0.0.0/8", "::1/128"],
            }
        }
    )
    (v4_host, v4_port), (v6_host, v6_port) = gw.gateway.smtp.addresses
    refused = await asyncio.to_thread(greeting, v4_host, v4_port)
    assert refused == b"554 5.7.1 Access denied: your network is not allowed here\r\n"
    assert (await asyncio.to_thread(greeting, v6_host, v6_port)).startswith(b"220 ")
    assert platform.requests == []


async def test_connection_caps_overall_and_per_address(start_gateway: Start) -> None:
    gw = await start_gateway({"smtp": {"max_connections_per_address": 2}})
    first, second = [await asyncio.to_thread(gw.client) for _ in range(2)]
    third = await asyncio.to_thread(greeting, gw.host, gw.port)
    assert third == b"421 4.7.0 Too many connections from your address, try again later\r\n"
    await asyncio.to_thread(first.quit)
    # The slot is free again once the server has seen the connection go.
    counter = gw.gateway.smtp.admission.connections
    await eventually(lambda: counter.total == 1)
    assert (await asyncio.to_thread(greeting, gw.host, gw.port)).startswith(b"220 ")
    await asyncio.to_thread(second.quit)

    capped = await start_gateway(
        {"smtp": {"max_connections": 1}, "spool": {"path": str(gw.gateway.config.spool.path) + "2"}}
    )
    held = await asyncio.to_thread(capped.client)
    assert await asyncio.to_thread(greeting, capped.host, capped.port) == (
        b"421 4.7.0 Too many connections to this server, try again later\r\n"
    )
    await asyncio.to_thread(held.quit)


async def test_messages_per_minute_per_address_get_451(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway({"smtp": {"max_messages_per_minute_per_address": 2}})

    def run() -> list[tuple[int, bytes]]:
        results = []
        with gw.client() as client:
            for _ in range(3):
                reply = client.mail("app@corp.test")
                if reply[0] == 250:
                    client.rcpt("79001234567@sms.local")
                    reply = client.data(text_message().as_bytes())
                else:
                    client.rset()
                results.append(reply)
        return results

    results = await asyncio.to_thread(run)
    assert [code for code, _ in results] == [250, 250, 451]
    assert results[2][1] == (
        b"4.7.1 Too many messages from your address (at most 2 a minute), try again later"
    )
    assert len(await platform.wait_for(2)) == 2


async def test_messages_per_minute_per_user(start_gateway: Start, platform: FakePlatform) -> None:
    gw = await start_gateway(
        {
            "smtp": {
                "max_messages_per_minute_per_user": 1,
                "auth": {"users": users(crm={}), "allow_without_tls": True, "required": False},
            }
        }
    )

    def send() -> tuple[int, bytes]:
        with gw.client() as client:
            client.login("crm", PASSWORD)
            return client.mail("app@corp.test")

    assert (await asyncio.to_thread(send))[0] == 250  # MAIL alone takes nothing
    await gw.send(text_message(), "79001234567@sms.local")  # anonymous: no user limit
    with pytest.raises(smtplib.SMTPSenderRefused):  # crm's one message, then 451
        for _ in range(2):

            def login_and_send() -> None:
                with gw.client() as client:
                    client.login("crm", PASSWORD)
                    client.sendmail(
                        "a@corp.test", ["79001234567@sms.local"], text_message().as_bytes()
                    )

            await asyncio.to_thread(login_and_send)
    assert len(await platform.wait_for(2)) == 2


def test_rate_and_login_tables_forget_what_no_longer_counts() -> None:
    now = [0.0]
    rates = RateLimiter(clock=lambda: now[0])
    assert rates.take("a", 1) and not rates.take("a", 1)
    now[0] = 61.0
    assert not rates.full("a", 1) and rates.events == {}
    logins = LoginFailures(clock=lambda: now[0])
    assert not logins.fail("x", 3, 10) and not logins.fail("x", 3, 10)
    assert logins.fail("x", 3, 10) and logins.is_blocked("x")
    now[0] = 80.0
    assert not logins.is_blocked("x") and logins.blocked == {}


async def test_a_client_stalling_mid_data_gets_421_and_others_are_served(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway({"smtp": {"timeout": "300ms"}})

    def stall() -> bytes:
        with socket.create_connection((gw.host, gw.port), timeout=10) as sock:
            sock.sendall(
                b"EHLO c.test\r\nMAIL FROM:<a@corp.test>\r\n"
                b"RCPT TO:<79001234567@sms.local>\r\nDATA\r\nSubject: half\r\n\r\nbo"
            )
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            return received

    said = await asyncio.to_thread(stall)
    assert said.endswith(b"421 4.4.2 gw.test Timeout, closing connection\r\n")
    await gw.send(text_message("after"), "79007654321@sms.local")
    [request] = await platform.wait_for(1)
    assert request.form["sent_to"] == "79007654321"


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("refuse", (550, b"5.7.1 Bounces (null sender) are not turned into messages here")),
        ("drop", (250, b"2.0.0 Ok: bounce discarded, nothing sent")),
    ],
)
async def test_bounces_are_refused_or_dropped(
    start_gateway: Start, platform: FakePlatform, setting: str, expected: tuple[int, bytes]
) -> None:
    gw = await start_gateway({"smtp": {"null_sender": setting}})
    if setting == "refuse":
        assert await gw.dialog("MAIL FROM:<>") == [expected]
    else:
        answers = await gw.dialog(
            "MAIL FROM:<>",
            "RCPT TO:<79001234567@sms.local>",
            "DATA",
            b"Subject: Undelivered\r\n\r\nbounce\r\n.",
        )
        assert answers[3] == expected
    await gw.send(text_message("real"), "79007654321@sms.local")
    assert [r.form["sent_to"] for r in await platform.wait_for(1)] == ["79007654321"]
    counted = gw.gateway.metrics.exposition().decode()
    action = "refused" if setting == "refuse" else "dropped"
    assert (
        f'smtp2pulse_messages_filtered_total{{action="{action}",kind="null_sender"}} 1.0' in counted
    )


@pytest.mark.parametrize(
    ("header", "filtered"),
    [
        ("Auto-Submitted: auto-replied", True),
        ("Auto-Submitted: auto-generated", True),
        ("X-Autoreply: yes", True),
        ("Precedence: auto_reply", True),
        ("Auto-Submitted: no", False),
        ("Auto-Submitted: No (a person wrote this)", False),
        ("Precedence: bulk", False),
    ],
)
async def test_automatic_replies_are_refused(
    start_gateway: Start, platform: FakePlatform, header: str, filtered: bool
) -> None:
    gw = await start_gateway()
    name, value = header.split(": ", 1)
    message = text_message("Out of office", **{name.replace("-", "_"): value})
    refused = await gw.send(message, "79001234567@sms.local") if not filtered else None
    if filtered:
        with pytest.raises(smtplib.SMTPDataError) as error:
            await gw.send(message, "79001234567@sms.local")
        assert (error.value.smtp_code, error.value.smtp_error) == (
            550,
            b"5.7.1 Automatic replies (Auto-Submitted) are not turned into messages here",
        )
        assert platform.requests == []
    else:
        assert refused == {}
        assert len(await platform.wait_for(1)) == 1


async def test_auto_replies_may_be_dropped_or_accepted(
    start_gateway: Start, platform: FakePlatform
) -> None:
    dropping = await start_gateway({"smtp": {"auto_submitted": "drop"}})
    reply = await dropping.dialog(
        "MAIL FROM:<a@corp.test>",
        "RCPT TO:<79001234567@sms.local>",
        "DATA",
        b"Auto-Submitted: auto-replied\r\n\r\naway\r\n.",
    )
    assert reply[3] == (250, b"2.0.0 Ok: automatic reply discarded, nothing sent")
    accepting = await start_gateway(
        {
            "smtp": {"auto_submitted": "accept"},
            "spool": {"path": str(dropping.gateway.config.spool.path) + "2"},
        }
    )
    await accepting.send(text_message(Auto_Submitted="auto-generated"), "79001234567@sms.local")
    assert len(await platform.wait_for(1)) == 1


def test_tokens_from_a_file_and_from_systemd_credentials(tmp_path: Path) -> None:
    (tmp_path / "pulse-token").write_text("tok-from-credential\n")
    (tmp_path / "crm.token").write_text("tok-from-file\n")
    data = {
        **MINIMAL,
        "api": {"token_credential": "pulse-token"},
        "smtp": {
            "auth": {
                "allow_without_tls": True,
                "users": users(crm={"token_file": str(tmp_path / "crm.token")}),
            }
        },
    }
    config = parse_config(data, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert config.api.token.reveal() == "tok-from-credential"
    assert config.smtp.auth is not None
    crm = config.smtp.auth.users["crm"]
    assert crm.token is not None and crm.token.reveal() == "tok-from-file"
    assert "tok-from" not in repr(config)

    with pytest.raises(ConfigError) as error:
        parse_config(data, env={})
    assert error.value.problems == [
        "api.token_credential: CREDENTIALS_DIRECTORY is not set (systemd sets it for a unit "
        "with LoadCredential=pulse-token:...)"
    ]
    with pytest.raises(ConfigError) as error:
        parse_config({**MINIMAL, "api": {"token": "x", "token_file": "/nonexistent/t"}}, env={})
    assert error.value.problems == [
        "api.token: set only one of token, token_file, token_credential"
    ]
    with pytest.raises(ConfigError) as error:
        parse_config({**MINIMAL, "api": {"token": ["tok-SECRET"]}}, env={})
    assert "tok-SECRET" not in str(error.value.problems)


def test_phone_numbers_and_addresses_are_masked_in_logs_when_asked() -> None:
    line = (
        "queue_id=0190ABCDEF12AB34 accepted from=<crm@corp.test> rcpt=79001234567 "
        "to <+79007654321@sms.local>"
    )
    assert mask_personal(line) == (
        "queue_id=0190ABCDEF12AB34 accepted from=<c***@corp.test> rcpt=***67 to <+***@sms.local>"
    )
    enabled = [False]
    record = logging.LogRecord(
        "smtp2pulse", logging.INFO, __file__, 1, "to=%s", ("79001234567",), None
    )
    masking = PersonalDataFilter(lambda: enabled[0])
    assert masking.filter(record) and record.getMessage() == "to=79001234567"
    enabled[0] = True
    assert masking.filter(record) and record.getMessage() == "to=***67"


def test_reply_helper_reads_final_lines() -> None:
    assert replies(b"250-a\r\n250 b\r\n421 c\r\n") == [(250, "b"), (421, "c")]


def test_example_config_documents_the_access_keys() -> None:
    text = (Path(__file__).resolve().parents[2] / "config" / "example.yaml").read_text()
    for key in (
        "max_connections:",
        "max_connections_per_address:",
        "max_messages_per_minute_per_user:",
        "max_messages_per_minute_per_address:",
        "null_sender:",
        "auto_submitted:",
        "require_starttls:",
        "require_auth:",
        "cert:",
        "key:",
        "min_version:",
        "implicit_listen:",
        "required:",
        "allow_without_tls:",
        "accept_any_credentials:",
        "max_failures:",
        "block_for:",
        "password_hash:",
        "domains:",
        "senders:",
        "token_file:",
        "token_credential:",
        "mask_personal_data:",
    ):
        assert key in text, key
