"""RFC 3464 notifications to the envelope sender, captured by a real SMTP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import Running, eventually, text_message
from tests.fakeplatform import FakePlatform, Reply


def blocks(status: Message) -> list[Message]:
    """A message/delivery-status part's header blocks: the message's, then each recipient's."""
    payload = status.get_payload()
    assert isinstance(payload, list)
    found = [block for block in payload if isinstance(block, Message)]
    assert len(found) == len(payload)
    return found


class Capture:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.arrived = asyncio.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(
            (envelope.mail_from or "", list(envelope.rcpt_tos), envelope.original_content or b"")
        )
        self.arrived.set()
        return "250 OK"


@pytest.fixture
async def relay() -> AsyncIterator[tuple[Capture, int]]:
    capture = Capture()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(capture, hostname="relay.test"), "127.0.0.1", 0)
    yield capture, server.sockets[0].getsockname()[1]
    server.close()


def bounces(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "bounces": {
            "enabled": True,
            "relay": f"127.0.0.1:{port}",
            "from": "gateway@corp.test",
            **extra,
        }
    }


async def test_refused_delivery_sends_one_dsn_to_the_sender(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    relay: tuple[Capture, int],
) -> None:
    capture, port = relay
    gw = await start_gateway(bounces(port))
    platform.default = Reply(body='{"type": "error", "msg": "Number is blacklisted"}')
    message = text_message("Order 42", "ready")
    message["Message-ID"] = "<order-42@crm.corp.test>"
    queue_id = await gw.submit(message, "79001234567@sms.local", sender="crm@corp.test")
    assert await gw.wait_final(queue_id) == ["refused"]
    await asyncio.wait_for(capture.arrived.wait(), 10)

    [(mail_from, rcpts, raw)] = capture.messages
    assert (mail_from, rcpts) == ("<>", ["crm@corp.test"])  # null return path
    dsn = message_from_bytes(raw, policy=policy.default)
    assert isinstance(dsn, EmailMessage)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert dsn["From"] == "gateway@corp.test"
    human, status, headers = dsn.iter_parts()
    assert "Number is blacklisted" in human.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_recipient = blocks(status)
    assert per_message["Reporting-MTA"] == "dns; gw.test"
    assert per_recipient["Final-Recipient"] == "rfc822; 79001234567@sms.local"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.0.0"
    assert "Number is blacklisted" in per_recipient["Diagnostic-Code"]
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Message-ID: <order-42@crm.corp.test>" in headers.get_payload()

    # The relay has the DSN before the bouncer has its 250 back and records "sent".
    async def bounce_sent() -> bool:
        detail = await gw.gateway.spool.show_message(queue_id)
        assert detail is not None
        return detail.deliveries[0].bounce == "sent"

    await eventually(bounce_sent, every=0.02)


async def test_given_up_delivery_bounces_with_5_4_7(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    relay: tuple[Capture, int],
) -> None:
    capture, port = relay
    gw = await start_gateway({**bounces(port), "spool": {"give_up_after": "200ms"}})
    platform.default = Reply(status=503)
    queue_id = await gw.submit(text_message(), "79001234567@sms.local", sender="crm@corp.test")
    assert await gw.wait_final(queue_id) == ["failed"]
    await asyncio.wait_for(capture.arrived.wait(), 10)
    dsn = message_from_bytes(capture.messages[0][2], policy=policy.default)
    assert isinstance(dsn, EmailMessage)
    _, status, _ = dsn.iter_parts()
    assert blocks(status)[1]["Status"] == "5.4.7"


async def test_no_dsn_to_a_null_sender_nor_when_disabled(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    relay: tuple[Capture, int],
) -> None:
    capture, port = relay
    platform.default = Reply(body='{"type": "error", "msg": "no"}')
    # Bounces are refused at MAIL by default (smtp.null_sender); this test needs one stored.
    gw = await start_gateway({**bounces(port), "smtp": {"null_sender": "accept"}})
    null_sender = await gw.submit(text_message(), "79001234567@sms.local", sender="")
    disabled = await start_gateway(
        {
            "spool": {"path": str(gw.gateway.config.spool.path) + ".2"},
            **bounces(port, enabled=False),
        }
    )
    other = await disabled.submit(text_message(), "79001234567@sms.local", sender="crm@corp.test")
    assert await gw.wait_final(null_sender) == ["refused"]
    assert await disabled.wait_final(other) == ["refused"]
    for running, queue_id in ((gw, null_sender), (disabled, other)):
        detail = await running.gateway.spool.show_message(queue_id)
        assert detail is not None and detail.deliveries[0].bounce is None
    assert capture.messages == []


async def test_failed_status_by_callback_bounces_once(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    relay: tuple[Capture, int],
) -> None:
    from tests.status.test_status import HTTP, get, submit_and_callback_url

    capture, port = relay
    gw = await start_gateway({**HTTP, **bounces(port)})
    _, url = await submit_and_callback_url(gw, platform)
    await get(url.replace("{id}", "1").replace("{status}", "undelivered"))
    await asyncio.wait_for(capture.arrived.wait(), 10)
    # A second failing status once the first one's DSN is out (or on its way) makes none.
    assert await get(url.replace("{id}", "1").replace("{status}", "rejected")) == (
        200,
        '{"result": "recorded"}',
    )
    await gw.gateway.stop()
    assert len(capture.messages) == 1
    dsn = message_from_bytes(capture.messages[0][2], policy=policy.default)
    assert isinstance(dsn, EmailMessage)
    assert "the platform reported status undelivered" in next(dsn.iter_parts()).get_content()


async def test_two_failed_statuses_at_once_bounce_once(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    relay: tuple[Capture, int],
) -> None:
    """Both before the bouncer reads them: one DSN, citing the platform's status as it stands
    when the DSN is made (either one; which is a race this test does not pin down)."""
    from tests.status.test_status import HTTP, get, submit_and_callback_url

    capture, port = relay
    gw = await start_gateway({**HTTP, **bounces(port)})
    _, url = await submit_and_callback_url(gw, platform)
    await asyncio.gather(
        *(
            get(url.replace("{id}", "1").replace("{status}", status))
            for status in ("undelivered", "rejected")
        )
    )
    await asyncio.wait_for(capture.arrived.wait(), 10)
    await gw.gateway.stop()
    assert len(capture.messages) == 1
    dsn = message_from_bytes(capture.messages[0][2], policy=policy.default)
    assert isinstance(dsn, EmailMessage)
    text = next(dsn.iter_parts()).get_content()
    assert ("status undelivered" in text) != ("status rejected" in text)
