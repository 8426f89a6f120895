"""Every spool test runs on both backends: the `spool` fixture is a started SQLite spool in a
fresh file, then a started PostgreSQL spool in a fresh database on the session's real server
(tests/pgserver.py; CI installs PostgreSQL, so that leg never skips)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.spool.base import BaseSpool
from gateway.spool.pg.store import PgSpool
from gateway.spool.sqlite.store import SqliteSpool
from tests.conftest import fresh_database

OpenSpool = Callable[..., Awaitable[BaseSpool]]


@pytest.fixture(params=["sqlite", "pg"])
async def open_spool(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenSpool]:
    """Starts spools of the parameter's backend, all on one file or database (two of them are
    two gateways of one PostgreSQL spool); stops them after the test."""
    started: list[BaseSpool] = []
    url = (
        await fresh_database(request.getfixturevalue("pg_server")) if request.param == "pg" else ""
    )

    async def start(**kwargs: Any) -> BaseSpool:
        spool: BaseSpool = (
            PgSpool(url, **kwargs) if url else SqliteSpool(tmp_path / "spool.sqlite3", **kwargs)
        )
        await spool.start()
        started.append(spool)
        return spool

    yield start
    for spool in reversed(started):
        await spool.stop()


@pytest.fixture
async def spool(open_spool: OpenSpool) -> BaseSpool:
    return await open_spool()


async def fetch(spool: BaseSpool, statement: str) -> list[tuple[Any, ...]]:
    """A query on a connection of the test's own, beside the spool's (what is committed)."""
    if isinstance(spool, SqliteSpool):
        conn = sqlite3.connect(spool.path)
        try:
            return conn.execute(statement).fetchall()
        finally:
            conn.close()
    assert isinstance(spool, PgSpool)
    pg = await asyncpg.connect(spool.link.url)
    try:
        return [tuple(row) for row in await pg.fetch(statement)]
    finally:
        await pg.close()
