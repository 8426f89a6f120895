"""A throwaway PostgreSQL server for the bench's p and g scenarios (and --postgres)."""

from __future__ import annotations

import asyncio
import sys

from harness import REPO


class Postgres:
    """A real PostgreSQL server for the run (tests/pgserver.py: initdb in a temporary directory,
    as the `postgres` user when the bench runs as root), a fresh database for each round, on
    the same two cores as everything else."""

    def __init__(self) -> None:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from tests.pgserver import PgServer

        self.server = PgServer()
        self.server.init()
        self.server.start()
        self._count = 0

    @property
    def pid(self) -> int:
        """The postmaster's: its children are the backends doing the spool's work."""
        return int((self.server.data / "postmaster.pid").read_text().split()[0])

    async def database(self) -> str:
        import asyncpg

        self._count += 1
        name = f"bench{self._count}"
        conn = await asyncpg.connect(self.server.url)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        return self.server.url.rsplit("/", 1)[0] + "/" + name

    async def transactions(self, url: str) -> float:
        """Transactions committed in that database so far (pg_stat_database.xact_commit): read
        after the gateways exited, whose backends flush their counts as they end."""
        import asyncpg

        await asyncio.sleep(0.5)  # the last backends' counts reach the shared statistics
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            count = await conn.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            )
        finally:
            await conn.close()
        return float(count)

    def stop(self) -> None:
        self.server.remove()
