"""Signed callbacks against the delivery they speak for: a platform that reports on a delivery
before answering its request, SMPP's receipt words, and Kannel flags that are not ASCII."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from tests.conftest import Running, eventually, text_message
from tests.fakeplatform import FakePlatform, Received, Reply
from tests.status.test_status import HTTP, base, get, submit_and_callback_url


def _state(gw: Running) -> str:
    """The one delivery's state, read the way `queue` reads it: another connection."""
    with contextlib.closing(sqlite3.connect(gw.gateway.config.spool.path)) as conn:
        (state,) = conn.execute("SELECT state FROM deliveries").fetchone()
    return str(state)


class ReportingFirst(FakePlatform):
    """Takes the request, calls its signed callback with `status` at once, and answers only
    after `answer_after` seconds (longer than the gateway's api.timeout)."""

    def __init__(self, status: str, answer_after: float) -> None:
        super().__init__()
        self.status = status
        self.answer_after = answer_after
        self.gateway_base = ""
        self.callbacks: list[tuple[int, str]] = []

    async def _reply(self, received: Received) -> web.Response:
        query = urlsplit(received.form["callback"]).query
        url = (self.gateway_base + "/callback?" + query).replace("{id}", "4242")
        self.callbacks.append(await get(url.replace("{status}", self.status)))
        await asyncio.sleep(self.answer_after)
        return await super()._reply(received)


REPORTS = [("delivered", "delivered"), ("UNDELIV", "failed")]


@pytest.mark.parametrize(("status", "shown"), REPORTS)
async def test_a_callback_while_sending_settles_it_and_the_timeout_does_not_undo_it(
    start_gateway: Callable[..., Awaitable[Running]], status: str, shown: str
) -> None:
    await reported_while_sending(start_gateway, status, shown)


@pytest.mark.parametrize(("status", "shown"), REPORTS)
async def test_the_same_on_postgresql(
    start_on_pg: Callable[..., Awaitable[Running]], status: str, shown: str
) -> None:
    await reported_while_sending(start_on_pg, status, shown)


async def reported_while_sending(
    start: Callable[..., Awaitable[Running]], status: str, shown: str
) -> None:
    platform = ReportingFirst(status, answer_after=2.0)
    await platform.start()
    try:
        gw = await start({**HTTP, "api": {"base_url": platform.base_url, "timeout": "1s"}})
        platform.gateway_base = base(gw)
        queue_id = await gw.submit(text_message(), "79001234567@sms.local")
        # The request times out (1 s) before its reply (2 s); the callback came first.
        await platform.wait_for(1)
        await eventually(
            lambda: (
                gw.gateway.worker.busy == 0
                and len(platform.requests) >= 1
                and platform.requests[0].answered
            ),
            within=10,
        )
        # Past the retry schedule (50 ms, 100 ms) several times over.
        await asyncio.sleep(1.0)
        assert len(platform.requests) == 1
        assert platform.callbacks == [(200, '{"result": "recorded"}')]
        detail = await gw.gateway.spool.show_message(queue_id)
        assert detail is not None
        [delivery] = detail.deliveries
        assert (delivery.state, delivery.status, delivery.status_class) == ("sent", status, shown)
        assert delivery.attempts == 1 and delivery.last_error is None
        kinds = [kind for _, kind, _ in delivery.events]
        assert kinds == ["received", "sent", "status"]  # no "deferred" over it, one "sent"
    finally:
        await platform.stop()


async def test_a_late_callback_settles_a_delivery_waiting_for_its_retry(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    # The request is answered 503 (or its reply lost); the platform had it all the same.
    gw = await start_gateway({**HTTP, "spool": {"retry": ["1h"]}})
    platform.default = Reply(status=503)
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    await platform.wait_for(1)
    await eventually(lambda: _state(gw) == "queued")
    query = urlsplit(platform.requests[0].form["callback"]).query
    url = base(gw) + "/callback?" + query.replace("{id}", "9").replace("{status}", "DELIVRD")
    assert await get(url) == (200, '{"result": "recorded"}')
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None
    assert (detail.deliveries[0].state, detail.deliveries[0].status_class) == ("sent", "delivered")


# SMPP's delivery receipt states (the `stat:` field), as a platform may pass them on.
@pytest.mark.parametrize(
    ("word", "meaning"),
    [
        ("DELIVRD", "delivered"),
        ("EXPIRED", "failed"),
        ("DELETED", "failed"),
        ("UNDELIV", "failed"),
        ("REJECTD", "failed"),
        ("ACCEPTD", "pending"),
        ("ENROUTE", "pending"),
        ("UNKNOWN", "unknown"),
    ],
)
async def test_smpp_receipt_words_are_understood(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    word: str,
    meaning: str,
) -> None:
    gw = await start_gateway(HTTP)
    queue_id, url = await submit_and_callback_url(gw, platform)
    assert await get(url.replace("{id}", "5").replace("{status}", word)) == (
        200,
        '{"result": "recorded"}',
    )
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None
    assert (detail.deliveries[0].status, detail.deliveries[0].status_class) == (word, meaning)


@pytest.mark.parametrize("status", ["²", "٣", "9" * 60])
async def test_a_kannel_status_that_is_not_ascii_flags_is_unknown_not_a_500(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform, status: str
) -> None:
    gw = await start_gateway(
        {**HTTP, "domains": {"sms.local": {"type": "sms", "kannel_status": True}}}
    )
    queue_id, url = await submit_and_callback_url(gw, platform)
    assert await get(url.replace("{id}", "5").replace("{status}", status)) == (
        200,
        '{"result": "recorded"}',
    )
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None
    assert detail.deliveries[0].status_class == "unknown"
