"""kill -9 under load, many times: is every 250 delivered, and how many are sent twice?

    python bench/crashes.py                       # 100 kills each at batch_size 1 and 100
    python bench/crashes.py --kills 20 --batch-sizes 1,20,100

For each batch size: one spool and one fake platform (replying after --latency), then --kills
cycles of: start the gateway, load it from --connections SMTP sessions for a random 0.3-1.2 s,
SIGKILL it mid-stream. The load is paced (--pace) below what batch_size 1 delivers, so both
sizes see the same flow and the backlog does not outgrow the run; --pace 0 is full speed. Then
one last start that runs until every message answered 250 has reached the platform, and a clean
stop. Printed: messages accepted, lost (must be 0), messages the platform got more than once, as
a count and a share of those accepted, and per kill.

At-least-once means a kill can repeat what was on the wire at that instant (the platform took it,
its reply never got recorded). That is the platform's rate × its reply time, with or without
batches; a batch only makes it arrive in larger pieces.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import Child, PlatformClient, expected_keys, start_gateway, start_helper
from loadgen import LoadResult, LoadSpec, run_load


async def one_size(batch_size: int, args: argparse.Namespace, rng: random.Random) -> str:
    platform, port = await start_helper(
        "fakeplatform.py", "--latency", args.latency, "--max-seconds", 7200
    )
    workdir = Path(tempfile.mkdtemp(prefix=f"crash-b{batch_size}-"))
    accepted: dict[str, LoadResult] = {}
    try:
        for kill in range(args.kills):
            gateway, smtp_port, _log = await start_gateway(workdir, port, args, None, batch_size)
            spec = LoadSpec(
                "127.0.0.1",
                smtp_port,
                messages=10**6,
                connections=args.connections,
                run_id=f"b{batch_size}k{kill}",
                pace=args.pace,
                deadline=rng.uniform(0.3, 1.2),
            )
            load_task = asyncio.create_task(run_load(spec))
            await asyncio.sleep(spec.deadline)
            gateway.process.send_signal(signal.SIGKILL)
            await gateway.process.wait()
            accepted[spec.run_id] = await load_task
            print(
                f"  batch_size {batch_size}: kill {kill + 1}/{args.kills}",
                file=sys.stderr,
                end="\r",
            )
        gateway, _smtp, _log = await start_gateway(workdir, port, args, None, batch_size)
        expected = set().union(*(expected_keys(load) for load in accepted.values()))
        client = PlatformClient(port)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            deliveries = await client.deliveries()
            if expected <= deliveries.keys():
                break
            await asyncio.sleep(0.5)
        await gateway.stop()
        deliveries = await client.deliveries()
        stats = await client.stats()
    finally:
        await platform.stop()
    lost = len(expected - deliveries.keys())
    twice = [key for key in expected if key in deliveries and deliveries[key][0] > 1]
    per_kill = [
        sum(1 for key in expected_keys(load) if deliveries.get(key, [0])[0] > 1)
        for load in accepted.values()
    ]
    share = 100 * len(twice) / max(len(expected), 1)
    return (
        f"| {batch_size} | {args.kills} | {len(expected)} | {lost} | {len(twice)}"
        f" ({share:.2f} %) | {statistics.median(per_kill):.0f} / {max(per_kill)} |"
        f" {stats['requests']:.0f} |"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--batch-sizes", default="1,100")
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument(
        "--pace",
        type=float,
        default=0.1,
        help="each session's pause after a message: 10 sessions at 0.1 s bring"
        " about 100 msgs/s, which batch_size 1 delivers as it comes",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--api-concurrency", type=int, default=8)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    # What harness.write_config reads besides these.
    args.keep_limits, args.many_connections = False, args.connections
    rng = random.Random(args.seed)
    rows = []
    try:
        for size in (int(s) for s in args.batch_sizes.split(",")):
            rows.append(await one_size(size, args, rng))
    finally:
        await Child.stop_all()
    print(
        f"\nkill -9 every 0.3-1.2 s under load from {args.connections} sessions (each"
        f" pausing {args.pace:g} s after a message), platform at {args.latency * 1000:.0f} ms,"
        f" max_concurrency {args.api_concurrency}\n"
    )
    print(
        "| batch_size | kills | accepted | lost | sent twice | twice per kill (median / max)"
        " | requests |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    asyncio.run(main())
