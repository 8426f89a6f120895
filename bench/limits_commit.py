"""What a domain's `limits` cost the spool's group commit alone, without SMTP: µs per stored
message, accepts with a limits' spend (every limit set, high enough to admit all) against the
same accepts without, on a fresh SQLite file and a fresh PostgreSQL database each run,
alternating, several rounds; medians and their ratio.

    python bench/limits_commit.py --rounds 5 --messages 2000 --wave 20

`--wave` accepts are submitted at once, so each group commit holds about that many (as a busy
SMTP side makes them). Each message goes to its own recipient: per_recipient's worst case.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pgcluster import Postgres

from gateway.spool import DayLimits, IncomingMessage, NewDelivery, Spend, SpoolInterface
from gateway.spool.pg.store import PgSpool
from gateway.spool.sqlite.store import SqliteSpool


def message(n: int, limits: DayLimits | None) -> IncomingMessage:
    to = f"7900{n:07d}"
    spend = Spend(limits, to, 1) if limits is not None else None
    request = {"sent_to": to, "sent_text": f"alert {n}: the UPS at site 7 is on battery"}
    delivery = NewDelivery(f"{to}@sms.local", request, spend=spend)
    return IncomingMessage("app@corp.test", "127.0.0.1", "client", b"x" * 1024, (delivery,))


async def one_run(spool: SpoolInterface, args: argparse.Namespace, limited: bool) -> float:
    now = time.time()
    limits = (
        DayLimits(
            "sms.local",
            "2026-01-01",
            now + 86400,
            per_recipient=(1000, 3600.0),
            messages_per_day=10**9,
            parts_per_day=10**9,
        )
        if limited
        else None
    )
    await spool.start()
    try:
        started = time.perf_counter()
        for first in range(0, args.messages, args.wave):
            await asyncio.gather(
                *(spool.accept(message(n, limits)) for n in range(first, first + args.wave))
            )
        return float((time.perf_counter() - started) / args.messages * 1e6)
    finally:
        await spool.stop()


async def main(args: argparse.Namespace) -> None:
    postgres = Postgres() if "pg" in args.spools else None
    found: dict[tuple[str, bool], list[float]] = {}
    try:
        for round_no in range(args.rounds):
            for kind in args.spools:
                for limited in (False, True):
                    with tempfile.TemporaryDirectory() as tmp:
                        spool: SpoolInterface = (
                            PgSpool(await postgres.database())
                            if postgres is not None and kind == "pg"
                            else SqliteSpool(Path(tmp) / "spool.sqlite3")
                        )
                        us = await one_run(spool, args, limited)
                    found.setdefault((kind, limited), []).append(us)
                    print(f"round {round_no} {kind} limits={limited}: {us:.0f} µs/message")
    finally:
        if postgres is not None:
            postgres.server.stop()
    for kind in args.spools:
        without = statistics.median(found[(kind, False)])
        with_ = statistics.median(found[(kind, True)])
        print(
            f"{kind}: without limits {without:.0f} µs/message, with {with_:.0f},"
            f" ratio {with_ / without:.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--wave", type=int, default=20)
    parser.add_argument("--spools", nargs="+", default=["sqlite", "pg"])
    asyncio.run(main(parser.parse_args()))
    sys.exit(0)
