"""Hostile input on the delivery side (issue 11): bounces, slow platforms, callbacks, Retry-After,
a token echoed back. Each against the running gateway, over real sockets."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator, Awaitable, Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import Running, base_config, eventually, text_message
from tests.fakeplatform import FakePlatform, Reply
from tests.spool.statements import run_sql
from tests.test_crash import Daemon

Start = Callable[..., Awaitable[Running]]
REFUSED = Reply(body='{"type": "error", "msg": "Номер в чёрном списке"}')


# --- 4: one bad notification does not stop the bouncer ---------------------------------------


class Relay:
    """A real SMTP server standing in for bounces.relay; it keeps what it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(
            (envelope.mail_from or "", list(envelope.rcpt_tos), envelope.original_content or b"")
        )
        return "250 OK"

    async def start(self, smtputf8: bool) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="relay.test", enable_SMTPUTF8=smtputf8), "127.0.0.1", 0
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def to(self, rcpt: str) -> list[EmailMessage]:
        found = []
        for _, rcpts, raw in self.messages:
            if rcpt in rcpts:
                dsn = message_from_bytes(raw, policy=policy.default)
                assert isinstance(dsn, EmailMessage)
                found.append(dsn)
        return found


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    server = Relay()
    await server.start(smtputf8=False)
    yield server
    server.close()


@pytest.fixture
async def utf8_relay() -> AsyncIterator[Relay]:
    server = Relay()
    await server.start(smtputf8=True)
    yield server
    server.close()


def bounces(port: int) -> dict[str, Any]:
    return {
        "bounces": {
            "enabled": True,
            "relay": f"127.0.0.1:{port}",
            "from": "gateway@corp.test",
            "timeout": "5s",
        }
    }


def cp1251_message(subject: str = "Счёт на оплату № 42") -> bytes:
    """What 1C sends: an 8-bit Subject in raw CP1251, no RFC 2047."""
    return (
        b"From: 1C <buh@corp.test>\r\nTo: 79001234567@sms.local\r\nSubject: "
        + subject.encode("cp1251")
        + b"\r\nMessage-ID: <1c-42@corp.test>\r\n"
        b"Content-Type: text/plain; charset=windows-1251\r\n\r\n"
        + "Оплатите счёт".encode("cp1251")
        + b"\r\n"
    )


def send_raw(gw: Running, sender: str, data: bytes, *, utf8: bool = False) -> str:
    with smtplib.SMTP(gw.host, gw.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail(sender, ["SMTPUTF8"] if utf8 else [])
        code, text = client.rcpt("79001234567@sms.local")
        assert code == 250, (code, text)
        code, text = client.data(data)
        assert code == 250, (code, text)
        return text.rsplit(b" ", 1)[1].decode()


async def bounce_state(gw: Running, queue_id: str, within: float = 15.0) -> tuple[str, str]:
    """Until the delivery's bounce is settled; its state and the bounce event's detail."""
    settled = ("", "")

    async def bounce_settled() -> bool:
        nonlocal settled
        detail = await gw.gateway.spool.show_message(queue_id)
        assert detail is not None
        [delivery] = detail.deliveries
        if delivery.bounce not in ("sent", "failed"):
            return False
        event = [d for _, kind, d in delivery.events if kind.startswith("bounce")]
        settled = delivery.bounce, event[-1] if event else ""
        return True

    await eventually(bounce_settled, within, every=0.05)
    return settled


async def test_cp1251_subject_and_utf8_sender_do_not_stop_later_bounces(
    start_gateway: Start, platform: FakePlatform, relay: Relay
) -> None:
    platform.default = REFUSED
    gw = await start_gateway(bounces(relay.port))
    # 1. A 1C message: raw CP1251 Subject; its DSN quotes the original headers in RFC 2047.
    first = await asyncio.to_thread(send_raw, gw, "buh@corp.test", cp1251_message())
    assert await bounce_state(gw, first) == ("sent", "")
    [dsn] = relay.to("buh@corp.test")
    human, status, headers = dsn.iter_parts()
    assert "Номер в чёрном списке" in human.get_content()
    per_recipient: Any = status.get_payload()[1]  # type: ignore[index]
    assert "Номер в чёрном списке" in per_recipient["Diagnostic-Code"]
    quoted = headers.get_payload()
    assert isinstance(quoted, str) and quoted.isascii()
    original = message_from_bytes(quoted.encode(), policy=policy.default)
    assert original["Subject"] == "Счёт на оплату № 42"  # decoded as the parser reads it
    assert original["Message-ID"] == "<1c-42@corp.test>"

    # 2. A UTF-8 envelope sender, and a relay without SMTPUTF8: recorded as failed, one line.
    second = await asyncio.to_thread(
        send_raw, gw, "бухгалтерия@corp.test", text_message().as_bytes(), utf8=True
    )
    state, detail = await bounce_state(gw, second)
    assert state == "failed" and "SMTPUTF8" in detail

    # 3. The bouncer is still alive: the next one goes out.
    third = await asyncio.to_thread(send_raw, gw, "crm@corp.test", text_message().as_bytes())
    assert await bounce_state(gw, third) == ("sent", "")
    assert len(relay.to("crm@corp.test")) == 1
    assert relay.to("бухгалтерия@corp.test") == []


async def test_utf8_sender_gets_its_dsn_through_a_relay_with_smtputf8(
    start_gateway: Start, platform: FakePlatform, utf8_relay: Relay
) -> None:
    platform.default = REFUSED
    gw = await start_gateway(bounces(utf8_relay.port))
    queue_id = await asyncio.to_thread(
        send_raw, gw, "бухгалтерия@corp.test", cp1251_message(), utf8=True
    )
    assert await bounce_state(gw, queue_id) == ("sent", "")
    [dsn] = utf8_relay.to("бухгалтерия@corp.test")
    assert dsn["To"] == "бухгалтерия@corp.test"


async def test_sigterm_exits_0_after_a_1c_bounce(
    tmp_path: Path, platform: FakePlatform, relay: Relay
) -> None:
    platform.default = REFUSED
    config = tmp_path / "config.yaml"
    data = base_config(tmp_path / "spool.sqlite3", platform.base_url)
    config.write_text(yaml.safe_dump({**data, **bounces(relay.port)}, allow_unicode=True))
    daemon = Daemon(config)
    port = await daemon.start()
    try:

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.sendmail("buh@corp.test", ["79001234567@sms.local"], cp1251_message())
                client.sendmail(
                    "crm@corp.test", ["79001234567@sms.local"], text_message().as_bytes()
                )

        await asyncio.to_thread(send)
        await eventually(lambda: len(relay.messages) == 2, within=20)
    finally:
        code = await daemon.terminate()
    assert code == 0, "\n".join(daemon.log[-20:])
    assert any(line.endswith("stopped") for line in daemon.log)


# --- 6: one deadline per request; never lease what is in flight ------------------------------


class Dribbler:
    """A platform that answers one byte at a time: every read is quick, the reply never ends."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self.posts: list[dict[str, str]] = []
        self.hung_up = 0  # connections the gateway closed before the reply ended
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/bulk"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from urllib.parse import parse_qsl

        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            self.posts.append(dict(parse_qsl((await reader.readexactly(length)).decode())))
            body = b'{"type": "success", "id": "1"}' + b" " * 120
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            for byte in body:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(self.every)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.hung_up += 1
        finally:
            writer.close()


@pytest.fixture
async def dribbler() -> AsyncIterator[Dribbler]:
    server = Dribbler()
    await server.start()
    yield server
    server.close()


async def event_texts(gw: Running, queue_id: str, kind: str, within: float) -> list[str]:
    """Until the delivery has events of this kind; their details."""
    texts: list[str] = []

    async def found() -> bool:
        nonlocal texts
        detail = await gw.gateway.spool.show_message(queue_id)
        assert detail is not None
        texts = [text for _, what, text in detail.deliveries[0].events if what == kind]
        return bool(texts)

    await eventually(found, within, every=0.1)
    return texts


@pytest.mark.parametrize("mode", ["inline", "process"])
async def test_a_dribbling_platform_gets_one_post_and_an_unknown_outcome(
    start_gateway: Start, dribbler: Dribbler, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv("SMTP2PULSE_SENDER", mode)
    gw = await start_gateway(
        {"api": {"base_url": dribbler.base_url, "timeout": "2s"}, "spool": {"retry": ["1h"]}}
    )
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    # The whole reply would take 75 s; every single read takes 0.5 s, well within 2 s. The
    # status line said 200: the platform has it, so not a retry but unknown (issue 29, 3).
    [unknown] = await event_texts(gw, queue_id, "unknown", within=15)
    assert "HTTP 200, reply unreadable: timeout" in unknown
    await eventually(lambda: dribbler.hung_up == 1, within=5)  # the request was cancelled
    assert len(dribbler.posts) == 1


async def test_a_delivery_in_flight_past_its_lease_is_not_sent_again(
    start_gateway: Start, dribbler: Dribbler
) -> None:
    gw = await start_gateway(
        {"api": {"base_url": dribbler.base_url, "timeout": "6s"}, "spool": {"retry": ["1h"]}}
    )
    await gw.submit(text_message(), "79001234567@sms.local")
    await eventually(lambda: len(dribbler.posts) == 1, within=10)
    # What a stuck send looked like: its lease runs out while the request is still going.
    await run_sql(gw.sqlite, "UPDATE deliveries SET next_attempt_at = 0 WHERE state = 'sending'")
    await gw.submit(text_message(), "79007654321@sms.local")  # wakes the worker: a lease
    await eventually(lambda: len(dribbler.posts) >= 2, within=10)
    await asyncio.sleep(1.0)
    assert sorted(post["sent_to"] for post in dribbler.posts) == ["79001234567", "79007654321"]


# --- 14: Retry-After is capped -----------------------------------------------------------------


async def test_a_huge_retry_after_is_capped(start_gateway: Start, platform: FakePlatform) -> None:
    gw = await start_gateway({"spool": {"retry": ["50ms", "2h"]}})
    platform.default = Reply(status=429, headers={"Retry-After": "99999999999"})
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    [deferred] = await event_texts(gw, queue_id, "deferred", within=10)
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None
    wait = detail.deliveries[0].next_attempt_at - detail.received_at
    assert 1.8 * 3600 < wait < 2.3 * 3600, deferred  # the schedule's longest wait, ±10%


async def test_a_huge_retry_after_still_gives_up_and_bounces_at_the_deadline(
    start_gateway: Start, platform: FakePlatform, relay: Relay
) -> None:
    gw = await start_gateway(
        {**bounces(relay.port), "spool": {"retry": ["1h"], "give_up_after": "2s"}}
    )
    platform.default = Reply(status=429, headers={"Retry-After": "99999999999"})
    queue_id = await gw.submit(text_message(), "79001234567@sms.local", sender="crm@corp.test")
    assert await gw.wait_final(queue_id, within=15) == ["failed"]
    assert len(platform.requests) == 2  # the first, and the last one at the deadline
    assert await bounce_state(gw, queue_id) == ("sent", "")


# --- 16: the token masked in every spelling an echo gives it ----------------------------------

ODD_TOKEN = "tok/SECRET+0123=abc/def+ghi=="


class Echo:
    """A platform whose error pages echo the request: the raw body in an HTML page, then the
    decoded fields inside the documented error JSON."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self._runner: Any = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/bulk"

    async def start(self) -> None:
        import json
        from urllib.parse import parse_qsl

        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            raw = await request.read()
            self.requests.append(raw)
            if len(self.requests) == 1:
                page = f"<html><body><h1>400 Bad Request</h1><pre>{raw.decode()}</pre>"
                return web.Response(status=400, text=page, content_type="text/html")
            fields = dict(parse_qsl(raw.decode()))
            reply = {"type": "error", "msg": f"bad request {json.dumps(fields)}"}
            return web.Response(
                text=json.dumps(reply).replace("/", "\\/"), content_type="application/json"
            )

        app = web.Application()
        app.router.add_post("/api/v1/bulk/send-message", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        await self._runner.cleanup()


@pytest.mark.parametrize("mode", ["inline", "process"])
async def test_a_token_with_slash_plus_equals_never_reaches_a_log_line(
    start_gateway: Start,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    mode: str,
) -> None:
    import json
    import logging
    from urllib.parse import quote, quote_plus

    monkeypatch.setenv("SMTP2PULSE_SENDER", mode)
    caplog.set_level(logging.DEBUG)
    echo = Echo()
    await echo.start()
    try:
        gw = await start_gateway({"api": {"base_url": echo.base_url, "token": ODD_TOKEN}})
        queue_id = await gw.submit(text_message(), "79001234567@sms.local")
        assert await gw.wait_final(queue_id) == ["refused"]
        await gw.gateway.stop()  # the sender process's last lines are out
    finally:
        await echo.stop()
    assert quote_plus(ODD_TOKEN).encode() in echo.requests[0]  # the echo had it
    stored = await asyncio.to_thread(_spool_text, gw.gateway.config.spool.path)
    assert "unrecognised reply" in stored and "***" in stored
    written = caplog.text + "\n".join(capfd.readouterr()) + stored
    for spelling in {
        ODD_TOKEN,
        quote_plus(ODD_TOKEN),
        quote(ODD_TOKEN),
        quote(ODD_TOKEN, ""),
        json.dumps(ODD_TOKEN)[1:-1].replace("/", "\\/"),
    }:
        for piece in (spelling, spelling[:12]):  # nor a part of it, cut by a shortening
            assert piece.lower() not in written.lower(), piece


def _spool_text(path: Path) -> str:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT detail FROM events UNION ALL SELECT coalesce(last_error, '') FROM deliveries"
        ).fetchall()
    finally:
        conn.close()
    return "\n".join(row[0] for row in rows)


# --- 13: callback input ------------------------------------------------------------------------


async def raw_http(host: str, port: int, head: bytes, body: bytes = b"") -> bytes:
    """Send a request head (and maybe the start of a body); the status line that comes back."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head + body)
        await writer.drain()
        return (await reader.readline()).rstrip()
    finally:
        writer.close()


async def test_malformed_delivery_ids_get_400_not_500(
    start_gateway: Start, platform: FakePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.status.test_status import HTTP, base, get, submit_and_callback_url

    gw = await start_gateway(HTTP)
    _, url = await submit_and_callback_url(gw, platform)
    for d in ("%C2%B2", "1" * 5000, "", "-1", "12a", "%EF%BC%91"):  # ², long, fullwidth 1
        status, body = await get(base(gw) + f"/callback?d={d}&q=ABC&sig=x&status=delivered")
        assert status == 400, (d[:20], status, body)
    status, _ = await get(base(gw) + "/callback?d=1&q=%ED%A0%80&sig=x&status=delivered")
    assert status == 400
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text
    good = url.replace("{id}", "1").replace("{status}", "delivered")
    assert await get(good) == (200, '{"result": "recorded"}')


async def test_an_unsigned_body_is_not_read(start_gateway: Start, platform: FakePlatform) -> None:
    from tests.status.test_status import HTTP

    gw = await start_gateway(HTTP)
    assert gw.gateway.status is not None
    host, port = gw.gateway.status.addresses[0]
    mib = 1 << 20
    # Forged signature in the URL: 403 while the announced MiB has not been sent.
    head = (
        b"POST /callback?d=1&q=ABC&sig=00000000 HTTP/1.1\r\nHost: gw\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n" % mib
    )
    async with asyncio.timeout(5):
        assert (await raw_http(host, port, head, b"status=x&"))[:12] == b"HTTP/1.1 403"
    # No signature in the URL: the body is judged by its length before a byte is read.
    head = (
        b"POST /callback HTTP/1.1\r\nHost: gw\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n" % mib
    )
    async with asyncio.timeout(5):
        assert (await raw_http(host, port, head))[:12] == b"HTTP/1.1 413"


async def test_one_signed_url_records_a_bounded_number_of_short_statuses(
    start_gateway: Start, platform: FakePlatform
) -> None:
    from gateway.status.callbacks import MAX_STATUSES
    from tests.status.test_status import HTTP, get, submit_and_callback_url

    gw = await start_gateway(HTTP)
    queue_id, url = await submit_and_callback_url(gw, platform)
    signed = url.replace("&id={id}&status={status}", "")
    assert await get(signed + "&id=1&status=" + "y" * 5000) == (200, '{"result": "recorded"}')
    results = [await get(url.replace("{id}", "1").replace("{status}", f"s{n}")) for n in range(60)]
    assert results.count((200, '{"result": "recorded"}')) == MAX_STATUSES - 1
    assert results[-1] == (200, '{"result": "ignored"}')
    # Past the 8 KiB cap (the MiB case, over a raw socket, is the test above).
    assert (await get(signed, "POST", data={"status": "z" * (64 << 10)}))[0] == 413
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None
    statuses = [text for _, kind, text in detail.deliveries[0].events if kind == "status"]
    assert len(statuses) == MAX_STATUSES
    assert statuses[0].startswith("y" * 64 + " (unknown)")
    assert detail.deliveries[0].status == f"s{MAX_STATUSES - 2}"
