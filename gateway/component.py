"""What the daemon starts and stops: one shape for every part with a life of its own.

The Gateway drives its parts through this protocol only, so a part chosen at start (the sender
in this process or in a child) needs no special case there.
"""

from __future__ import annotations

from typing import Protocol


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Release what start() took; called once, also after a start that failed midway."""

    def ready(self) -> bool:
        """Whether it can do its work now (shown on /healthz)."""
