"""What a domain's `limits` cost the accept path: the same SMTP load to a gateway whose domain
has every limit (set high enough that all is admitted, so each message is counted) and to one
whose domain has none, alternating, a fresh spool each run; SQLite and PostgreSQL.

    python bench/limits_cost.py --rounds 3 --messages 2000 --connections 10

Prints each run's accepted messages per second and, per spool, the medians and their ratio.
Each message goes to its own recipient (loadgen's recipients_for), so per_recipient counts a
new row for every message: the worst case for the count's statements.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from harness import LISTENING, START_TIMEOUT, Child, start_helper, write_config
from loadgen import LoadSpec, run_load
from pgcluster import Postgres

LIMITS = {
    "per_recipient": "1000/1h",
    "messages_per_day": 10_000_000,
    "parts_per_day": 10_000_000,
}


async def one_run(workdir: Path, args: argparse.Namespace, limits: bool, url: str | None) -> float:
    platform, platform_port = await start_helper("fakeplatform.py", "--max-seconds", 3600)
    try:
        config_path = write_config(workdir, platform_port, args, url)
        config = yaml.safe_load(config_path.read_text())
        if limits:
            config["domains"]["sms.local"]["limits"] = LIMITS
        config_path.write_text(yaml.safe_dump(config))
        log_path = workdir / "gateway.log"
        gateway = await Child.spawn_logged(
            "gateway", [sys.executable, "-m", "gateway", "serve", "-c", str(config_path)], log_path
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            port = None
            while port is None and time.monotonic() < deadline:
                match = LISTENING.search(log_path.read_text(errors="replace"))
                port = int(match.group(1)) if match else None
                await asyncio.sleep(0.05)
            assert port is not None, log_path.read_text()[-2000:]
            spec = LoadSpec("127.0.0.1", port, args.messages, args.connections, run_id="lim")
            result = await run_load(spec)
            assert len(result.accepted) == args.messages, result.refused
            return result.rate
        finally:
            await gateway.stop()
    finally:
        await platform.stop()


async def main(args: argparse.Namespace) -> None:
    postgres = Postgres() if "pg" in args.spools else None
    rates: dict[tuple[str, bool], list[float]] = {}
    try:
        for round_no in range(args.rounds):
            for spool in args.spools:
                for limits in (False, True):
                    with tempfile.TemporaryDirectory() as tmp:
                        url = await postgres.database() if postgres and spool == "pg" else None
                        rate = await one_run(Path(tmp), args, limits, url)
                    rates.setdefault((spool, limits), []).append(rate)
                    print(f"round {round_no} {spool} limits={limits}: {rate:.0f} msg/s", flush=True)
    finally:
        if postgres is not None:
            postgres.server.stop()
    for spool in args.spools:
        without = statistics.median(rates[(spool, False)])
        with_ = statistics.median(rates[(spool, True)])
        print(
            f"{spool}: without limits {without:.0f} msg/s, with {with_:.0f} msg/s,"
            f" ratio {with_ / without:.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--spools", nargs="+", default=["sqlite", "pg"])
    parsed = parser.parse_args()
    parsed.many_connections = parsed.connections
    parsed.keep_limits = False
    parsed.api_concurrency = 8
    parsed.log_level = "info"
    asyncio.run(main(parsed))
