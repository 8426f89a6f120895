"""The log line about quiet hours names the zone of the time it prints: the domain's own, which
is not the zone of the log's stamps (issue 31: Moscow time beside UTC stamps, neither named)."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from tests.conftest import Running, text_message
from tests.fakeplatform import FakePlatform


async def held(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    caplog: pytest.LogCaptureFixture,
    domain: dict[str, str],
) -> str:
    gw = await start_gateway({"domains": {"sms.local": domain}})
    gw.gateway.smtp.handler.clock = lambda: datetime(2026, 12, 2, 20, 30, tzinfo=UTC).timestamp()
    with caplog.at_level(logging.INFO):
        await gw.send(text_message("Alert", "db1"), "79001234567@sms.local")
        await platform.wait_for(1)
    [line] = [r.getMessage() for r in caplog.records if "quiet hours" in r.getMessage()]
    return line


async def test_the_domains_zone_is_named(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    caplog: pytest.LogCaptureFixture,
) -> None:
    line = await held(
        start_gateway, platform, caplog, {"quiet_hours": "22:00-08:00", "timezone": "Europe/Moscow"}
    )
    assert "quiet hours: held until 2026-12-03 08:00 Europe/Moscow +0300" in line


async def test_without_a_timezone_the_machines_offset_is_named(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    caplog: pytest.LogCaptureFixture,
) -> None:
    line = await held(start_gateway, platform, caplog, {"quiet_hours": "00:00-23:59"})
    assert re.search(r"quiet hours: held until \d{4}-\d\d-\d\d 23:59 [+-]\d{4}\b", line), line
