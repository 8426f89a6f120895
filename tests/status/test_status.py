"""The HTTP side over real HTTP: /healthz, /metrics, signed callbacks, /messages."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.conftest import Running, eventually, text_message
from tests.fakeplatform import FakePlatform

SECRET = "callback-secret-0123456789"
HTTP = {
    "http": {
        "listen": "127.0.0.1:0",
        "public_url": "https://gw.example.com",
        "callback_secret": SECRET,
    }
}


@pytest.fixture
async def gw(start_gateway: Callable[..., Awaitable[Running]]) -> Running:
    return await start_gateway(HTTP)


def base(gw: Running) -> str:
    assert gw.gateway.status is not None
    host, port = gw.gateway.status.addresses[0]
    return f"http://{host}:{port}"


async def get(url: str, method: str = "GET", **kwargs: Any) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, **kwargs) as response,
    ):
        return response.status, await response.text()


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text format (0 if absent)."""
    for line in text.splitlines():
        sample, _, value = line.partition(" ")
        if sample == name:
            return float(value)
    return 0.0


async def test_healthz_ok_then_503_when_listeners_are_gone(gw: Running) -> None:
    assert await get(base(gw) + "/healthz") == (200, '{"status": "ok"}')
    await gw.gateway.smtp.close_listeners()
    status, body = await get(base(gw) + "/healthz")
    assert status == 503 and '"reason": "SMTP listeners are not bound"' in body


async def test_healthz_503_while_the_sender_process_is_not_running(
    start_gateway: Callable[..., Awaitable[Running]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTP2PULSE_SENDER", "process")
    gw = await start_gateway(HTTP)
    assert await get(base(gw) + "/healthz") == (200, '{"status": "ok"}')
    await gw.gateway.sender.stop()  # stopped for good: no new child comes
    status, body = await get(base(gw) + "/healthz")
    assert status == 503 and '"reason": "sender process is not running"' in body


async def test_healthz_503_when_the_spool_cannot_be_written(gw: Running) -> None:
    blocker = sqlite3.connect(gw.gateway.config.spool.path, timeout=5)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        status, body = await get(base(gw) + "/healthz")
        assert status == 503 and "spool is not writable" in body
    finally:
        blocker.rollback()
        blocker.close()

    # The probe that timed out finishes once the lock is gone; then all is well again.
    async def healthy() -> bool:
        return (await get(base(gw) + "/healthz"))[0] == 200

    await eventually(healthy, within=15, every=0.1)


async def test_metrics_follow_the_mail(gw: Running, platform: FakePlatform) -> None:
    status, before = await get(base(gw) + "/metrics")
    assert status == 200
    assert metric(before, "smtp2pulse_messages_accepted_total") == 0
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    await gw.wait_final(queue_id)
    await gw.dialog("MAIL FROM:<a@corp.test>", "RCPT TO:<x@gmail.com>")
    _, after = await get(base(gw) + "/metrics")
    assert metric(after, "smtp2pulse_messages_accepted_total") == 1
    assert 'smtp2pulse_deliveries_total{outcome="sent"} 1.0' in after
    assert 'smtp2pulse_smtp_refusals_total{reason="denied"} 1.0' in after
    assert 'smtp2pulse_spool_deliveries{state="sent"} 1.0' in after
    assert metric(after, "smtp2pulse_smtp_sessions_total") == 2
    assert "smtp2pulse_platform_request_seconds_bucket" in after
    assert metric(after, "smtp2pulse_spool_oldest_pending_seconds") == 0


async def submit_and_callback_url(
    gw: Running, platform: FakePlatform, to: str = "79001234567@sms.local"
) -> tuple[str, str]:
    queue_id = await gw.submit(text_message(), to)
    await gw.wait_final(queue_id)
    callback = platform.requests[-1].form["callback"]
    parts = urlsplit(callback)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://gw.example.com/callback"
    assert parts.query.endswith("&id={id}&status={status}")
    # What the platform does: fill in {id} and {status}, then call it.
    return queue_id, base(gw) + "/callback?" + parts.query


async def test_signed_callback_is_recorded_once(gw: Running, platform: FakePlatform) -> None:
    queue_id, url = await submit_and_callback_url(gw, platform)
    filled = url.replace("{id}", "1000").replace("{status}", "delivered")
    assert await get(filled) == (200, '{"result": "recorded"}')
    assert await get(filled) == (200, '{"result": "repeated"}')  # the platform retries
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None
    [delivery] = detail.deliveries
    assert delivery.status == "delivered" and delivery.status_class == "delivered"
    assert [kind for _, kind, _ in delivery.events] == ["received", "sent", "status"]
    _, metrics = await get(base(gw) + "/metrics")
    assert 'smtp2pulse_callbacks_total{result="recorded"} 1.0' in metrics
    assert 'smtp2pulse_callbacks_total{result="repeated"} 1.0' in metrics

    status, body = await get(base(gw) + f"/messages/{queue_id}")
    assert status == 200 and '"status": "delivered"' in body and '"kind": ' not in body


async def test_post_callback_with_form_fields(gw: Running, platform: FakePlatform) -> None:
    queue_id, url = await submit_and_callback_url(gw, platform)
    query = dict(part.split("=", 1) for part in urlsplit(url).query.split("&"))
    form = {
        "d": query["d"],
        "q": query["q"],
        "sig": query["sig"],
        "id": "7",
        "status": "undelivered",
    }
    assert await get(base(gw) + "/callback", "POST", data=form) == (200, '{"result": "recorded"}')
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None and detail.deliveries[0].status_class == "failed"


@pytest.mark.parametrize("tamper", ["sig", "d", "q", "unsigned"])
async def test_forged_callbacks_get_403_and_change_nothing(
    gw: Running, platform: FakePlatform, tamper: str
) -> None:
    queue_id, url = await submit_and_callback_url(gw, platform)
    url = url.replace("{id}", "1").replace("{status}", "delivered")
    query = dict(part.split("=", 1) for part in urlsplit(url).query.split("&"))
    if tamper == "unsigned":
        del query["sig"]
    elif tamper == "d":
        query["d"] = str(int(query["d"]) + 1)
    elif tamper == "q":
        query["q"] = "0" + query["q"][1:]
    else:
        query["sig"] = "0" * 32
    forged = base(gw) + "/callback?" + "&".join(f"{k}={v}" for k, v in query.items())
    assert (await get(forged))[0] == 403
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None and detail.deliveries[0].status is None


async def test_a_flood_of_forged_callbacks_logs_a_few_lines_and_counts_them_all(
    gw: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone can send made-up callback URLs: each is refused and counted in /metrics, but the
    log takes a few lines a minute, the next one saying how many it left out."""
    caplog.set_level(logging.INFO, logger="smtp2pulse")
    forged = base(gw) + "/callback?d=1&q=1A2B3C4D5E6F7A8B9&sig=" + "0" * 32 + "&id=1&status=x"
    for _ in range(40):
        assert (await get(forged))[0] == 403
    lines = [r.getMessage() for r in caplog.records if "forged or unsigned" in r.getMessage()]
    assert len(lines) == 10
    exposition = gw.gateway.metrics.exposition().decode()
    assert 'smtp2pulse_callbacks_total{result="forged"} 40.0' in exposition
    throttle = gw.gateway.status._refused_lines if gw.gateway.status else None
    assert throttle is not None
    throttle._opened -= throttle.period  # a minute later
    assert (await get(forged))[0] == 403
    lines = [r.getMessage() for r in caplog.records if "forged or unsigned" in r.getMessage()]
    assert len(lines) == 11 and lines[-1].endswith("(30 more like it not logged)")


async def test_signed_callback_for_an_unknown_delivery(gw: Running) -> None:
    from gateway.status.callbacks import callback_url

    url = callback_url(base(gw) + "/callback", SECRET, 99999, "NOSUCHQUEUEID")
    filled = url.replace("{id}", "1").replace("{status}", "delivered")
    assert await get(filled) == (200, '{"result": "unknown"}')


async def test_kannel_codes_are_mapped(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway(
        {**HTTP, "domains": {"sms.local": {"type": "sms", "kannel_status": True}}}
    )
    queue_id, url = await submit_and_callback_url(gw, platform)
    for code, meaning in (("8", "pending"), ("1", "delivered")):
        await get(url.replace("{id}", "5").replace("{status}", code))
        detail = await gw.gateway.spool.show_message(queue_id)
        assert detail is not None
        assert (detail.deliveries[0].status, detail.deliveries[0].status_class) == (code, meaning)


async def test_history_and_metrics_are_for_allowed_networks_only(
    start_gateway: Callable[..., Awaitable[Running]],
) -> None:
    gw = await start_gateway({"http": {**HTTP["http"], "allow_networks": ["10.0.0.0/8"]}})
    assert (await get(base(gw) + "/metrics"))[0] == 403
    assert (await get(base(gw) + "/messages/X"))[0] == 403
    assert (await get(base(gw) + "/healthz"))[0] == 200


async def test_unknown_message_is_404(gw: Running) -> None:
    assert (await get(base(gw) + "/messages/NOPE"))[0] == 404
