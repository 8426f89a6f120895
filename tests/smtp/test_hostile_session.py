"""Issue 11, the session side: one hostile client against caps, networks, AUTH and the log.

Each test replays an attack from the issue against the running gateway over real sockets.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import select
import smtplib
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.app import Gateway
from gateway.config.loader import load_config, parse_config
from gateway.errors import ConfigError
from gateway.smtp.auth import LoginFailures
from tests.access_helpers import (
    PASSWORD,
    USER_TOKEN,
    Certificate,
    make_certificate,
    plain_auth,
    tls_section,
    users,
)
from tests.conftest import TOKEN, Running, base_config, eventually, merge, text_message
from tests.fakeplatform import FakePlatform

Start = Callable[..., Awaitable[Running]]
BLOCKED = (421, "4.7.0 Too many failed logins from your address, try again later")
BAD = (535, "5.7.8 Authentication credentials invalid")
OK_AUTH = (235, "2.7.0 Authentication successful")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


class Raw:
    """One SMTP session over a plain socket, a command at a time."""

    def __init__(self, host: str, port: int, ehlo: bool = True) -> None:
        self.sock = socket.create_connection((host, port), timeout=20)
        self.reader = self.sock.makefile("rb")
        self.greeting = self.reply()
        if ehlo:
            self.command("EHLO client.test")

    def reply(self) -> tuple[int, str]:
        while True:
            line = self.reader.readline()
            if not line:
                return (0, "closed")
            if line[3:4] != b"-":
                return int(line[:3]), line[4:].decode("utf-8", "replace").rstrip("\r\n")

    def command(self, line: str | bytes) -> tuple[int, str]:
        self.sock.sendall((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


async def raw(host: str, port: int, ehlo: bool = True) -> Raw:
    return await asyncio.to_thread(Raw, host, port, ehlo)


def closed_within(
    socks: list[socket.socket], seconds: float, enough: int | None = None
) -> set[int]:
    """Indexes of the sockets the server closed (or reset) within `seconds`, or as soon as
    `enough` of them are."""
    closed: set[int] = set()
    deadline = time.monotonic() + seconds
    enough = len(socks) if enough is None else enough
    while len(closed) < enough and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select(
            [s for i, s in enumerate(socks) if i not in closed], [], [], left
        )
        for sock in readable:
            try:
                data = sock.recv(1)
            except OSError:
                data = b""
            assert data == b"", "the server sent bytes before any TLS handshake"
            closed.add(socks.index(sock))
    return closed


def secured(
    certificate: Certificate,
    implicit: Any = "127.0.0.1:0",
    tls: dict[str, Any] | None = None,
    **smtp: Any,
) -> dict[str, Any]:
    return {
        "smtp": {
            "tls": tls_section(certificate, implicit_listen=implicit, **(tls or {})),
            "auth": {"users": users(crm={"token": USER_TOKEN}), "required": False},
            **smtp,
        }
    }


# --- 5: SMTPS is admitted at TCP accept -------------------------------------------------------


async def test_silent_tls_connections_over_the_cap_are_closed_before_any_handshake(
    start_gateway: Start, certificate: Certificate, platform: FakePlatform
) -> None:
    # SMTPS on ::1, the plain port on 127.0.0.1: two client keys, so that the cap on one
    # shows while the other is served.
    gw = await start_gateway(
        secured(certificate, implicit="[::1]:0", max_connections_per_address=3)
    )
    host, port = gw.gateway.smtp.addresses[-1]
    silent = [socket.create_connection((host, port), timeout=10) for _ in range(10)]
    try:
        # Before the fix all ten were held for smtp.timeout (5 minutes) waiting for a hello.
        closed = await asyncio.to_thread(closed_within, silent, 10, 7)
        assert len(closed) == 7
        assert (
            await asyncio.to_thread(
                closed_within, [s for i, s in enumerate(silent) if i not in closed], 0.5
            )
            == set()
        )
        assert gw.gateway.smtp.admission.connections.by_address == {"::/64": 3}
        # A client on the other key is served at once while the three are held.
        await gw.send(text_message("while held"), "79001234567@sms.local")
        assert len(await platform.wait_for(1)) == 1
        with pytest.raises((ssl.SSLError, OSError)):
            await asyncio.to_thread(
                smtplib.SMTP_SSL, host, port, context=certificate.client_context(), timeout=10
            )
    finally:
        for sock in silent:
            sock.close()


async def test_a_refused_network_is_closed_at_accept_without_a_handshake(
    start_gateway: Start, certificate: Certificate
) -> None:
    gw = await start_gateway(secured(certificate, allow_networks=["10.0.0.0/8"]))
    host, port = gw.gateway.smtp.addresses[-1]
    sock = socket.create_connection((host, port), timeout=10)
    try:
        # Before the fix: held, silent, until the 5-minute handshake timeout.
        assert await asyncio.to_thread(closed_within, [sock], 5) == {0}
    finally:
        sock.close()
    assert gw.gateway.smtp.admission.connections.total == 0
    with pytest.raises((ssl.SSLError, OSError)):
        await asyncio.to_thread(
            smtplib.SMTP_SSL, host, port, context=certificate.client_context(), timeout=10
        )


async def test_the_handshake_has_its_own_short_timeout(
    start_gateway: Start, certificate: Certificate
) -> None:
    gw = await start_gateway(
        secured(certificate, tls={"handshake_timeout": "1s"}, max_connections_per_address=1)
    )
    assert gw.gateway.config.smtp.tls is not None
    host, port = gw.gateway.smtp.addresses[-1]
    silent = socket.create_connection((host, port), timeout=10)
    try:
        started = time.monotonic()
        assert await asyncio.to_thread(closed_within, [silent], 15) == {0}
        assert time.monotonic() - started < 10  # smtp.timeout is 5 minutes
    finally:
        silent.close()

    def handshake() -> tuple[int, bytes]:
        with smtplib.SMTP_SSL(
            host, port, context=certificate.client_context(), timeout=10
        ) as client:
            return client.noop()

    # The slot came back (the cap is one connection).
    assert await asyncio.to_thread(handshake) == (250, b"2.0.0 OK")


# --- 7, 9, 10: the login block ----------------------------------------------------------------


def two_listeners(**auth: Any) -> dict[str, Any]:
    """An AUTH-required listener first, a legacy one (AUTH optional) second."""
    return {
        "smtp": {
            "listen": [
                {"address": "127.0.0.1:0", "require_auth": True},
                {"address": "127.0.0.1:0", "require_auth": False},
            ],
            "auth": {
                "users": users(crm={"token": USER_TOKEN}),
                "allow_without_tls": True,
                "accept_any_credentials": True,
                **auth,
            },
        }
    }


async def test_accept_any_credentials_never_opens_an_auth_required_listener(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway(two_listeners())
    (host, required), _ = gw.gateway.smtp.addresses
    session = await raw(host, required)
    answers = [
        await asyncio.to_thread(session.command, plain_auth(name, password))
        for name, password in (("crm", "guess 1"), ("printer", "x"), ("crm", "guess 2"))
    ]
    session.close()
    # Before the fix: three times 235, and no block ever.
    assert answers == [BAD, BAD, BLOCKED]
    again = await raw(host, required, ehlo=False)
    assert again.greeting == BLOCKED
    again.close()
    assert platform.requests == []


async def test_on_a_legacy_listener_junk_names_pass_but_guesses_at_a_user_are_counted(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway(two_listeners())
    _, (host, legacy) = gw.gateway.smtp.addresses
    junk = []
    for n in range(5):
        session = await raw(host, legacy)
        junk.append(await asyncio.to_thread(session.command, plain_auth(f"printer{n}", "x")))
        session.close()
    assert junk == [OK_AUTH] * 5  # the compatibility switch still works for devices

    # ... and their mail goes anonymously, with api.token.
    def send() -> None:
        with smtplib.SMTP(host, legacy, timeout=10) as client:
            client.sendmail(
                "printer@corp.test",
                ["79001234567@sms.local"],
                text_message("from a printer").as_bytes(),
            )

    await asyncio.to_thread(send)
    assert [r.form["token"] for r in await platform.wait_for(1)] == [TOKEN]

    guesses = []
    for attempt in range(3):
        session = await raw(host, legacy)
        guesses.append(
            await asyncio.to_thread(session.command, plain_auth("crm", f"guess {attempt}"))
        )
        session.close()
    assert guesses == [OK_AUTH, OK_AUTH, BLOCKED]


def test_accept_any_credentials_on_an_auth_required_listener_is_a_config_error() -> None:
    config = two_listeners()
    config["smtp"]["listen"][0]["accept_any_credentials"] = True
    with pytest.raises(ConfigError) as error:
        parse_config(
            {**config, "api": {"token": "t"}, "domains": {"sms.local": {"type": "sms"}}}, env={}
        )
    assert error.value.problems == [
        "smtp.listen[0].accept_any_credentials: cannot be true where AUTH is required: any "
        "password would pass; set require_auth: false there"
    ]


async def test_sessions_opened_before_a_block_cannot_guess_or_log_in_during_it(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway(
        {"smtp": {"auth": {"users": users(crm={}), "allow_without_tls": True}}}
    )
    sessions = [await raw(gw.host, gw.port) for _ in range(6)]
    first = sessions[0]
    tried = [
        await asyncio.to_thread(first.command, plain_auth("crm", f"guess {n}")) for n in range(3)
    ]
    assert tried == [BAD, BAD, BLOCKED]
    # Before the fix each pre-opened session had three guesses of its own, and the right
    # password logged in during the block.
    for session in sessions[1:]:
        assert await asyncio.to_thread(session.command, plain_auth("crm")) == BLOCKED
        assert await asyncio.to_thread(session.closed)
        session.close()
    first.close()
    assert platform.requests == []


async def test_ipv6_clients_are_counted_per_prefix(start_gateway: Start, tmp_path: Path) -> None:
    # The only IPv6 address this machine can connect from is ::1, and one address behaves
    # the same under every prefix: the daemon is shown to key ::1 by its prefix, and the key
    # function is shown to put the 40 addresses of one /64 under one key.
    auth = {"users": users(crm={}), "allow_without_tls": True}
    for prefix, key in ((None, "::/64"), (128, "::1/128"), (48, "::/48")):
        smtp: dict[str, Any] = {"listen": "[::1]:0", "auth": auth}
        if prefix is not None:
            smtp["ipv6_prefix"] = prefix
        gw = await start_gateway(
            {"smtp": smtp, "spool": {"path": str(tmp_path / f"{prefix}.sqlite3")}}
        )
        session = await raw(gw.host, gw.port)
        answers = [
            await asyncio.to_thread(session.command, plain_auth("crm", f"wrong {n}"))
            for n in range(3)
        ]  # three guesses (the same pair again is not one)
        session.close()
        assert answers == [BAD, BAD, BLOCKED]
        assert list(gw.gateway.smtp.admission.logins.blocked) == [key]

    from gateway.config.networks import address_key  # here: the module predates it

    logins = LoginFailures()
    neighbours = [f"2001:db8:1:2::{n:x}" for n in range(1, 41)]
    blocked = [logins.fail(address_key(a, 64), 3, 300) for a in neighbours[:3]]
    assert blocked == [False, False, True]
    assert all(logins.is_blocked(address_key(a, 64)) for a in neighbours)
    assert not logins.is_blocked(address_key("2001:db8:1:3::1", 64))
    assert address_key("::ffff:192.0.2.7", 64) == "192.0.2.7"

    with pytest.raises(ConfigError) as error:
        parse_config(
            {
                "smtp": {"ipv6_prefix": 16},
                "api": {"token": "t"},
                "domains": {"sms.local": {"type": "sms"}},
            },
            env={},
        )
    assert error.value.problems == ["smtp.ipv6_prefix: 16 is out of range (from 32 to 128)"]


# --- 11, 12: AUTH in a transaction, users removed by a reload, session lifetime ---------------


async def test_auth_during_a_transaction_is_503(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway(
        {
            "smtp": {
                "auth": {
                    "users": users(crm={"token": USER_TOKEN, "domains": ["sms.local"]}),
                    "required": False,
                    "allow_without_tls": True,
                }
            }
        }
    )
    session = await raw(gw.host, gw.port)
    steps = [
        await asyncio.to_thread(session.command, line)
        for line in (
            "MAIL FROM:<app@corp.test>",
            "RCPT TO:<user=example.com@mail.local>",
            plain_auth("crm"),
            "RSET",
            plain_auth("crm"),
            "MAIL FROM:<app@corp.test>",
            "RCPT TO:<user=example.com@mail.local>",
        )
    ]
    session.close()
    # Before the fix the AUTH after RCPT succeeded: mail.local, which crm may not use, went
    # with crm's token.
    assert steps == [
        (250, "2.1.0 Sender ok"),
        (250, "2.1.5 Recipient ok"),
        (503, "5.5.1 AUTH not permitted during a mail transaction"),
        (250, "2.0.0 OK"),
        OK_AUTH,
        (250, "2.1.0 Sender ok"),
        (550, "5.7.1 User crm may not send to mail.local"),
    ]
    assert platform.requests == []


async def test_a_user_removed_by_a_reload_cannot_log_in_on_an_older_session(
    tmp_path: Path, platform: FakePlatform
) -> None:
    path = tmp_path / "config.yaml"
    data = merge(
        base_config(tmp_path / "spool.sqlite3", platform.base_url),
        {
            "smtp": {
                "auth": {
                    "users": users(crm={}, ops={}),
                    "required": False,
                    "allow_without_tls": True,
                }
            }
        },
    )
    path.write_text(yaml.safe_dump(data))
    gateway = Gateway(load_config(path))
    await gateway.start()
    try:
        gw = Running(gateway)
        older = await raw(gw.host, gw.port)
        del data["smtp"]["auth"]["users"]["ops"]
        path.write_text(yaml.safe_dump(data))
        assert await gateway.reload(path) is True
        assert await asyncio.to_thread(older.command, plain_auth("ops")) == BAD
        assert await asyncio.to_thread(older.command, plain_auth("crm")) == OK_AUTH
        older.close()
    finally:
        await gateway.stop()


async def test_a_noop_loop_ends_at_the_session_lifetime(start_gateway: Start) -> None:
    gw = await start_gateway({"smtp": {"max_session_duration": "1s"}})
    session = await raw(gw.host, gw.port)

    def loop() -> list[tuple[int, str]]:
        answers = []
        for _ in range(200):  # 20 s of NOOPs at most
            answers.append(session.command("NOOP"))
            if answers[-1][0] != 250:
                break
            time.sleep(0.1)
        return answers

    answers = await asyncio.to_thread(loop)
    assert answers[-1] == (421, "4.4.2 Session time limit reached, closing connection")
    assert 5 <= len(answers) < 150
    assert await asyncio.to_thread(session.closed)
    session.close()


# --- 17: client-made errors are one log line ---------------------------------------------------


async def test_an_over_long_auth_line_is_one_warning_and_a_precise_reply(
    start_gateway: Start, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start_gateway(
        {"smtp": {"auth": {"users": users(crm={}), "allow_without_tls": True}}}
    )
    caplog.set_level(logging.INFO)
    session = await raw(gw.host, gw.port)
    steps = [
        await asyncio.to_thread(session.command, line)
        for line in (
            "AUTH LOGIN",
            b"A" * 1_500_000,  # over the reader's own limit
            "AUTH PLAIN",
            base64.b64encode(b"\0crm\0" + b"p" * 15_000),  # over RFC 4954's
            "AUTH LOGIN",
            base64.b64encode(b"crm").decode(),
            base64.b64encode(PASSWORD.encode()),
        )
    ]
    session.close()
    # Before the fix: "451 4.3.0 Internal error" and a traceback at ERROR.
    too_long = (500, "5.5.6 Authentication Exchange line is too long")
    assert [code for code, _ in steps] == [334, 500, 334, 500, 334, 334, 235]
    assert steps[1] == steps[3] == too_long
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    warned = [r.getMessage() for r in caplog.records if "exchange line" in r.getMessage()]
    assert warned == ["AUTH from 127.0.0.1: exchange line over 12288 bytes refused"] * 2


# --- 19: min_version as YAML reads it ----------------------------------------------------------


async def test_an_unquoted_min_version_is_taken(
    tmp_path: Path, certificate: Certificate, platform: FakePlatform
) -> None:
    path = tmp_path / "config.yaml"
    data = merge(
        base_config(tmp_path / "spool.sqlite3", platform.base_url),
        secured(certificate, tls={"min_version": 1.3}),
    )
    text = yaml.safe_dump(data)
    path.write_text(text)
    assert "min_version: 1.3\n" in text  # unquoted: a number to YAML
    config = load_config(path)
    assert config.smtp.tls is not None and config.smtp.tls.min_version == "1.3"
    gateway = Gateway(config)
    await gateway.start()
    try:
        host, port = gateway.smtp.addresses[-1]

        def connect(maximum: ssl.TLSVersion) -> str:
            context = certificate.client_context()
            context.maximum_version = maximum
            with smtplib.SMTP_SSL(host, port, context=context, timeout=10) as client:
                return str(client.sock.version())  # type: ignore[union-attr]

        assert await asyncio.to_thread(connect, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
        with pytest.raises((ssl.SSLError, OSError)):
            await asyncio.to_thread(connect, ssl.TLSVersion.TLSv1_2)
    finally:
        await gateway.stop()

    path.write_text(text.replace("min_version: 1.3", "min_version: 1.1"))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.problems == ["smtp.tls.min_version: '1.1' is not one of 1.2, 1.3"]


def test_smtps_admission_on_uvloop(tmp_path: Path, certificate: Certificate) -> None:
    # The daemon runs on uvloop when installed, whose transports start reading on their own
    # schedule: the SMTPS path is checked there too, a pipelining client included.
    import uvloop

    async def scenario() -> tuple[int, bytes, bool]:
        platform = FakePlatform()
        await platform.start()
        config = parse_config(
            merge(
                base_config(tmp_path / "spool.sqlite3", platform.base_url),
                secured(
                    certificate, tls={"handshake_timeout": "1s"}, max_connections_per_address=3
                ),
            ),
            env={},
        )
        gateway = Gateway(config)
        await gateway.start()
        try:
            host, port = gateway.smtp.addresses[-1]

            def attack() -> tuple[set[int], bytes]:
                silent = [socket.create_connection((host, port), timeout=10) for _ in range(6)]
                try:
                    early = closed_within(silent, 5, 3)
                    late = closed_within(silent, 10)  # the handshake timeout
                finally:
                    for sock in silent:
                        sock.close()
                assert len(late) == 6
                context = certificate.client_context()
                with (
                    socket.create_connection((host, port), timeout=10) as bare,
                    context.wrap_socket(bare, server_hostname="gw.test") as tls,
                ):
                    tls.sendall(b"EHLO early.test\r\nNOOP\r\nQUIT\r\n")
                    said = b""
                    while chunk := tls.recv(4096):
                        said += chunk
                return early, said

            early, said = await asyncio.to_thread(attack)
            await eventually(lambda: gateway.smtp.admission.connections.total == 0)
            loop_name = type(asyncio.get_running_loop()).__module__
            return len(early), said, loop_name.startswith("uvloop")
        finally:
            await gateway.stop()
            await platform.stop()

    refused_at_once, said, on_uvloop = uvloop.run(scenario())
    assert on_uvloop
    assert refused_at_once == 3
    assert said.endswith(b"250 2.0.0 OK\r\n221 2.0.0 Bye\r\n"), said
