"""The console's pacing (gateway/status/pace.py): a burst at once, then one page an interval,
and a 503 at once for a page that would wait past MAX_WAIT."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from gateway.status.pace import MAX_WAIT, Pace


async def test_a_burst_goes_at_once_then_one_page_an_interval() -> None:
    pace = Pace(rate=20.0, burst=3)
    started = time.monotonic()
    for _ in range(3):
        await pace.turn()
    assert time.monotonic() - started < 0.04  # the burst
    await pace.turn()
    await pace.turn()
    assert time.monotonic() - started >= 0.09  # then 1/20 s each


async def test_a_page_that_would_wait_too_long_is_refused_at_once() -> None:
    pace = Pace(rate=1.0, burst=1)
    waiting = [asyncio.create_task(pace.turn()) for _ in range(int(MAX_WAIT) + 1)]
    await asyncio.sleep(0)
    started = time.monotonic()
    with pytest.raises(web.HTTPServiceUnavailable):
        await pace.turn()
    assert time.monotonic() - started < 0.1
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
