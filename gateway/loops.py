"""Which event loop the daemon's processes run on."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


def loop_factory(configured: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """`event_loop: auto`: uvloop when it is installed (the `speed` extra), about a fifth more
    mail accepted per second in bench/; `asyncio` turns it off, `uvloop` insists on it.
    SMTP2PULSE_LOOP, when set, overrides the key."""
    choice = os.environ.get("SMTP2PULSE_LOOP") or configured
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit(
                "event_loop (or SMTP2PULSE_LOOP) is uvloop, but uvloop is not installed"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
