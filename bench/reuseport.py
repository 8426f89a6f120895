"""How much a second accepting process could give: one gateway, then two on one port.

    python bench/reuseport.py                 # 5 rounds, about 4 minutes
    python bench/reuseport.py --rounds 3 --messages 8000

smtp2pulse accepts in one process, and bench/stages.py shows it using about one core's worth
of a two-core machine, all under one GIL. This asks what a second accepting process would
give before anyone builds one: each round runs Sink, one gateway, and two gateways listening on
the same port with SO_REUSEPORT (the kernel spreads the connections over them), all with
scenario e's load and platform (batch_size 100, 50 ms).

It is a ceiling, not a design: the two gateways here have a spool each, so they never wait for
each other's writes, and each delivers its own messages. A real multi-process gateway shares
one spool (SQLite's single writer, or PostgreSQL) and one delivery side. The patch that adds
reuse_port is applied by this script to the gateways it starts (`--serve`); nothing of it is
in gateway/.

Printed: each run's msgs/s, and the medians of the two setups' rates over Sink's, paired per
round.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from loadgen import run_load
from run import START_TIMEOUT, Child, start_helper, write_config
from stages import load_options, spec, with_run_defaults

BENCH = Path(__file__).resolve().parent
SETUPS = {"sink": 0, "one": 1, "two": 2}   # how many gateways


def serve(config: str) -> int:
    """A gateway whose listening sockets take SO_REUSEPORT (uvloop's create_server)."""
    import uvloop

    create_server = uvloop.Loop.create_server

    async def shared(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await create_server(self, *args, **{**kwargs, "reuse_port": True})
    uvloop.Loop.create_server = shared   # type: ignore[method-assign]
    from gateway.cli import main
    return main(["serve", "-c", config])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def start_gateways(count: int, root: Path, platform_port: int, args: argparse.Namespace
                         ) -> tuple[int, list[Child], list[Path]]:
    port, children, logs = free_port(), [], []
    for number in range(count):
        workdir = Path(tempfile.mkdtemp(prefix=f"gateway{number}-", dir=root))
        config = write_config(workdir, platform_port, args, None, args.batch_size)
        settings = yaml.safe_load(config.read_text())
        settings["smtp"]["listen"] = f"127.0.0.1:{port}"
        config.write_text(yaml.safe_dump(settings, allow_unicode=True))
        logs.append(workdir / "gateway.log")
        children.append(await Child.spawn_logged(
            f"gateway {number}", [sys.executable, str(BENCH / "reuseport.py"), "--serve",
                                  "-c", str(config)], logs[-1]))
    for _ in range(int(START_TIMEOUT / 0.05)):
        if all("SMTP listening on" in log.read_text(errors="replace") for log in logs):
            return port, children, logs
        await asyncio.sleep(0.05)
    for child in children:
        await child.stop()
    raise RuntimeError("the gateways did not start:\n" + "\n".join(
        log.read_text(errors="replace")[-1000:] for log in logs))


async def one(setup: str, round_no: int, root: Path, args: argparse.Namespace
              ) -> tuple[float, list[int]]:
    """The run's msgs/s, and how many messages each gateway's log says it accepted."""
    platform, logs = None, []
    if setup == "sink":
        sink, port = await start_helper("sink.py", "--max-seconds", 3600)
        children = [sink]
    else:
        platform, platform_port = await start_helper("fakeplatform.py", "--latency",
                                                     args.latency, "--max-seconds", 3600)
        port, children, logs = await start_gateways(SETUPS[setup], root, platform_port, args)
    try:
        load = await run_load(spec(port, args, f"{setup}{round_no}"))
    finally:
        for child in children:
            await child.stop()
        if platform is not None:
            await platform.stop()
    if len(load.accepted) < args.messages:
        print(f"  {setup}: only {len(load.accepted)} of {args.messages} accepted",
              file=sys.stderr)
    return load.rate, [log.read_text(errors="replace").count(" accepted from=<") for log in logs]


async def compare(args: argparse.Namespace) -> None:
    rates: dict[str, list[float]] = {setup: [] for setup in SETUPS}
    with tempfile.TemporaryDirectory(prefix="smtp2pulse-reuseport-") as tmp:
        try:
            for round_no in range(1, args.rounds + 1):
                for setup in SETUPS:
                    rate, split = await one(setup, round_no, Path(tmp), args)
                    rates[setup].append(rate)
                    # With two, the kernel's hash decides who takes each connection.
                    shares = f" (accepted: {' + '.join(map(str, split))})" if split else ""
                    print(f"round {round_no}/{args.rounds}: {setup} {rate:.0f} msgs/s{shares}",
                          file=sys.stderr)
        finally:
            await Child.stop_all()
    print(f"\nreuseport: {args.rounds} rounds of {args.messages} messages × {args.connections}"
          f" connections, api.batch_size {args.batch_size}, platform at "
          f"{args.latency * 1000:.0f} ms; medians, ×sink paired per round")
    for setup in SETUPS:
        ratio = statistics.median(r / s for r, s in zip(rates[setup], rates["sink"],
                                                        strict=True))
        print(f"{setup:<6}{statistics.median(rates[setup]):>8.0f} msgs/s {ratio:>6.2f} ×sink"
              f"   rounds: " + ", ".join(f"{r:.0f}" for r in rates[setup]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    load_options(parser)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    return with_run_defaults(parser.parse_args(argv))


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        sys.exit(serve(arguments.config))
    asyncio.run(compare(arguments))
