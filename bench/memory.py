"""run.py --memory: one gateway's RSS after 10k and 50k messages, and its spool's size."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from harness import MB, PlatformClient, proc_status, start_gateway, start_helper
from loadgen import LoadSpec, run_load


async def memory_run(args: argparse.Namespace, spool_root: Path) -> list[str]:
    """RSS of one gateway after 10k and after 50k messages (1k/5k with --quick)."""
    steps = (1_000, 5_000) if args.quick else (10_000, 50_000)
    platform, platform_port = await start_helper("fakeplatform.py", "--max-seconds", 7200)
    client, lines, done = PlatformClient(platform_port), [], 0
    workdir = Path(tempfile.mkdtemp(prefix="memory-", dir=spool_root))
    try:
        gateway, port, _log = await start_gateway(workdir, platform_port, args)
        lines.append(f"at start: RSS {proc_status(gateway.pid)['VmRSS']:.1f} MB")
        try:
            for total in steps:
                print(f"memory: up to {total} messages", file=sys.stderr)
                load = await run_load(
                    LoadSpec(
                        "127.0.0.1",
                        port,
                        messages=total - done,
                        connections=args.connections,
                        recipients=args.recipients,
                        body_size=args.body_size,
                        charset=args.charset,
                        run_id=f"m{total}",
                        deadline=args.max_load_seconds,
                    )
                )
                done += len(load.accepted)
                await client.wait_for(done * args.recipients, cap=max(60.0, total / 20))
                status = proc_status(gateway.pid)
                parts = " + ".join(
                    f"{status[f'VmHWM{n}']:.1f}" for n in range(int(status["processes"]))
                )
                lines.append(
                    f"after {done} messages: RSS {status['VmRSS']:.1f} MB, peak "
                    f"{status['VmHWM']:.1f} MB ({parts}), spool {_spool_mb(workdir)}, "
                    f"{load.rate:.0f} msgs/s accepted in this step"
                )
        finally:
            await gateway.stop()
    finally:
        await platform.stop()
    return lines


def _spool_mb(workdir: Path) -> str:
    """The spool's size on disk, its write-ahead log (not yet checkpointed) shown apart."""
    database = workdir / "spool.sqlite3"
    wal = database.with_name(database.name + "-wal")
    size = database.stat().st_size / MB if database.exists() else 0.0
    wal_size = wal.stat().st_size / MB if wal.exists() else 0.0
    return f"{size:.1f} MB + WAL {wal_size:.1f} MB"
