"""How the bench's helper servers end: never later than their parent or their time limit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal


async def until_stopped(max_seconds: float) -> None:
    """Until SIGTERM/SIGINT, `max_seconds`, or the parent process going away (a bench that
    crashed must not leave its servers behind), whichever comes first."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    deadline = loop.time() + max_seconds
    while not stop.is_set() and loop.time() < deadline and os.getppid() == parent:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
