"""`preview`'s word on the domains' limits: whether the spool's counts as they stand would
send each delivery, or hold, drop or refuse it, and why (gateway.spool.budget). Only when the
spool can be read (an existing SQLite file, a reachable database); otherwise preview says the
limits were not checked, and prints the requests all the same.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from gateway.config.model import Config
from gateway.errors import SpoolError
from gateway.spool import NewDelivery, make_spool

_WOULD = {"hold": "held", "drop": "suppressed", "refuse": "refused with 452 4.2.2"}


def limit_verdicts(config: Config, deliveries: Sequence[NewDelivery]) -> list[str | None]:
    """For each delivery: what its limits would do with it now ("held: limit ... reached
    until ..."), or None if it would be sent (or has no limits)."""
    spends = [d.spend if d.suppressed is None else None for d in deliveries]
    if not any(spends):
        return [None] * len(deliveries)
    if config.spool.url is None and not config.spool.path.exists():
        return [None] * len(deliveries)  # an empty spool: nothing counted yet

    async def read() -> list[str | None]:
        spool = make_spool(config.spool)
        await spool.start(recover=False)  # the daemon may be running
        try:
            found: list[str | None] = []
            for spend in spends:
                over = None if spend is None else await spool.over_limit(spend)
                found.append(
                    None
                    if over is None or spend is None
                    else f"{_WOULD[spend.limits.over_limit]}: {over}"
                )
            return found
        finally:
            await spool.stop()

    try:
        return asyncio.run(read())
    except SpoolError as exc:
        print(f"limits not checked (spool not readable: {exc})", file=sys.stderr)
        return [None] * len(deliveries)
