"""Which event loop the daemon's processes run on."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (the `speed` extra): about a fifth more mail accepted per
    second in bench/. SMTP2PULSE_LOOP=asyncio turns it off, =uvloop insists on it."""
    choice = os.environ.get("SMTP2PULSE_LOOP", "auto")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("SMTP2PULSE_LOOP=uvloop, but uvloop is not installed") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
