"""The SQLite spool (`spool.path`, the default): one file, owned by one daemon.

Everything it does is BaseSpool's; what is its own is its statements (sql.py), its tables
(schema.py) and its connections (link.py: one writer thread, reads on their own connections),
and one thing at start: only the daemon holding the spool's lock uses the file, so a `sending`
row it finds was left by a process that died mid-attempt, and is taken back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.spool import jobs
from gateway.spool.base import BaseSpool
from gateway.spool.sqlite import sql
from gateway.spool.sqlite.link import SqliteLink

if TYPE_CHECKING:
    from gateway.spool.interface import SpoolInterface


class SqliteSpool(BaseSpool):
    link: SqliteLink

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        max_batch: int = 512,
        on_wake: Callable[[], None] | None = None,
    ) -> None:
        self.path = Path(path)
        super().__init__(sql, SqliteLink(self.path, max_batch, on_wake), clock)

    def __repr__(self) -> str:
        return f"SqliteSpool({str(self.path)!r})"

    async def start(self, *, recover: bool = True) -> int:
        """Open (creating or upgrading); with `recover`, which only the daemon holding the
        spool's lock may ask for, take back the leases a crash left. Returns how many."""
        await super().start()
        if not recover:
            return 0
        return await self.link.submit(lambda: jobs.recover(sql.RECOVER_LEASES, self.clock()))


if TYPE_CHECKING:
    _IMPLEMENTS: type[SpoolInterface] = SqliteSpool
