"""How many console pages the daemon renders a second, at most.

The page is for people, who reload it every few seconds; the daemon's event loop also answers
SMTP, and a page costs it a few milliseconds of CPU. Past a burst, pages wait their turn (an
await, which costs nothing) at RATE a second in all, so a client fetching pages in a loop, or a
dozen open tabs, take a bounded share of the loop whatever they do, and the accept path keeps
the rest. A request that would wait longer than MAX_WAIT is answered 503 at once instead: its
connection is not held for nothing (bench/README.md has the measurements).
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

RATE = 5.0  # pages a second, in all, once the burst is spent
BURST = 10  # pages at once, e.g. a person opening several tabs
MAX_WAIT = 5.0


class Pace:
    def __init__(self, rate: float = RATE, burst: int = BURST) -> None:
        self.interval = 1.0 / rate
        self.burst = burst
        self._due = 0.0  # when the pages granted so far would all have had their turn

    async def turn(self) -> None:
        """Return when this page may be made; raises 503 if that would be too long."""
        # GCRA (a token bucket kept as one time): up to `burst` pages at once, then one an
        # interval.
        now = time.monotonic()
        due = max(self._due, now)
        wait = max(0.0, due - now - (self.burst - 1) * self.interval)
        if wait > MAX_WAIT:
            raise web.HTTPServiceUnavailable(
                text="The console is busy: try again in a few seconds.\n",
                headers={"Retry-After": "5"},
            )
        self._due = due + self.interval
        if wait:
            await asyncio.sleep(wait)
