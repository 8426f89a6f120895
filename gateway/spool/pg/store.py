"""The spool in PostgreSQL (`spool.url`), shared by every gateway pointed at it.

Everything it does is BaseSpool's; what is its own is its statements (sql.py), its tables
(schema.py) and its connections (link.py: a writer task with group commit, a pool of readers,
a listener). What differs from the SQLite spool, and why:

- Leases are claimed with `FOR UPDATE SKIP LOCKED` (see sql.py). A gateway that dies leaves its
  leases to expire, and whoever leases next takes them over; nobody takes a lease that has not
  expired, and a lease outlives its request's whole deadline (`api.timeout`), so a live one is
  never stolen.
- `start` takes back no lease: in SQLite one process owns the spool, so a `sending` row at
  start was left by a crash; here it may be another gateway's live send.
- A commit that makes something due sends one NOTIFY; every gateway LISTENs (link.py), so its
  worker wakes at once instead of at its next look at the clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.spool.base import BaseSpool
from gateway.spool.pg import sql
from gateway.spool.pg.link import PgLink

if TYPE_CHECKING:
    from gateway.spool.interface import SpoolInterface


class PgSpool(BaseSpool):
    link: PgLink

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        on_notify: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(sql, PgLink(url, on_notify=on_notify), clock)

    def __repr__(self) -> str:
        return f"PgSpool({self.link!r})"


if TYPE_CHECKING:
    _IMPLEMENTS: type[SpoolInterface] = PgSpool
