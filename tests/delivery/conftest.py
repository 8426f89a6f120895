"""Gateways on a PostgreSQL spool, for the delivery tests that must hold on both spools."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config.loader import parse_config
from tests.conftest import Running, base_config, merge
from tests.fakeplatform import FakePlatform


@pytest.fixture
async def start_on_pg(
    tmp_path: Path, pg_url: str, platform: FakePlatform
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """start_gateway's twin with spool.url, a fresh database of the session's server."""
    started: list[Gateway] = []

    async def start(changes: dict[str, Any] | None = None, **kwargs: Any) -> Running:
        data = base_config(tmp_path / "unused.sqlite3", platform.base_url)
        del data["spool"]["path"]
        data["spool"]["url"] = pg_url
        gateway = Gateway(parse_config(merge(data, changes or {}), env={}), **kwargs)
        await gateway.start()
        started.append(gateway)
        return Running(gateway)

    yield start
    for gateway in reversed(started):
        await gateway.stop()
