"""A dry-running gateway says so wherever an operator looks: its log at every start, /healthz and
the top of the status page (issue 31: one following the README got a service that sent nothing
while the page said "sent")."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from tests.conftest import Running, text_message

HTTP = {"http": {"listen": "127.0.0.1:0"}}


async def looked_at(gw: Running, path: str) -> tuple[int, str]:
    assert gw.gateway.status is not None
    host, port = gw.gateway.status.addresses[0]
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{host}:{port}{path}") as response,
    ):
        return response.status, await response.text()


@pytest.mark.parametrize("dry", [True, False])
async def test_a_dry_run_says_so_at_start_in_healthz_and_on_the_page(
    start_gateway: Callable[..., Awaitable[Running]], caplog: pytest.LogCaptureFixture, dry: bool
) -> None:
    with caplog.at_level(logging.INFO, logger="smtp2pulse"):
        gw = await start_gateway({**HTTP, "api": {"dry_run": dry}})
    said = (
        "dry run: nothing is sent to the platform; each request is logged and recorded as "
        "sent (api.dry_run: true or serve --dry-run)"
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings.count(said) == (1 if dry else 0)

    status, body = await looked_at(gw, "/healthz")
    assert status == 200
    assert ('"dry_run": true' in body) is dry

    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    await gw.wait_final(queue_id)
    for path in ("/", f"/queue/{queue_id}"):
        status, html = await looked_at(gw, path)
        assert status == 200
        banner = html.find('id="dry-run"')
        assert (banner != -1) is dry, path
        if dry:  # at the top, before anything else the page says
            assert banner < html.find("<h1>") and "nothing is sent to the platform" in html
