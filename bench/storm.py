"""A storm of identical mails: what `repeat_window` costs the accept path (issue 32).

    python bench/storm.py                      # 3 rounds, 10,000 mails a run (about 6 minutes)
    python bench/storm.py --rounds 1 --messages 2000

Each round starts a fresh gateway (SQLite spool, the fake platform answering at once) for each of
four runs, in alternating order so that a shared host's drift hits both modes alike:

  storm off / storm on    `--messages` mails of one text to one recipient, each with its own
                          Message-ID (a device in a loop), without and with repeat_window 10m:
                          what the storm costs, the sending of what is not suppressed included;
  distinct off / on       `--messages` / 2 mails each of its own text: the window's keys are
                          written for every mail and none is a repeat, the worst case of its
                          cost to the accept path.

It prints, per run kind, the medians over rounds of the accept rate (messages answered 250 / the
load's wall time), the latency MAIL → 250 (p50 / p99), the gateway's CPU per message, and the
requests the platform got; then the on / off ratios of the rate, paired per round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from email.utils import formatdate
from pathlib import Path

import yaml
from cpu import CpuWindow
from harness import LISTENING, START_TIMEOUT, Child, PlatformClient, start_helper, write_config
from loadgen import Connection, percentile

TO = "79001234567@sms.local"
KINDS = ("storm off", "storm on", "distinct off", "distinct on")


def payload(n: int, distinct: bool) -> bytes:
    subject = f"UPS on battery {n}" if distinct else "UPS on battery"
    return (
        f"From: UPS <ups@corp.example>\r\nTo: {TO}\r\nSubject: {subject}\r\n"
        f"Message-ID: <storm-{n}-{time.time_ns()}@ups.corp.example>\r\n"
        f"Date: {formatdate(localtime=True)}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        "Utility power lost, running on battery, runtime 12 min.\r\n.\r\n"
    ).encode()


async def start(
    workdir: Path, platform_port: int, args: argparse.Namespace, window: bool
) -> tuple[Child, int]:
    """The gateway (harness.start_gateway's way), with or without repeat_window."""
    config = write_config(workdir, platform_port, args)
    data = yaml.safe_load(config.read_text())
    if window:
        data["domains"]["sms.local"]["repeat_window"] = "10m"
    config.write_text(yaml.safe_dump(data))
    log_path = workdir / "gateway.log"
    child = await Child.spawn_logged(
        "gateway", [sys.executable, "-m", "gateway", "serve", "-c", str(config)], log_path
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and child.process.returncode is None:
        match = LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return child, int(match.group(1))
        await asyncio.sleep(0.05)
    await child.stop()
    raise RuntimeError("gateway did not start:\n" + log_path.read_text()[-3000:])


async def load(port: int, messages: int, connections: int, distinct: bool) -> dict[str, float]:
    numbers = iter(range(messages))
    latencies: list[float] = []
    refused: Counter[str] = Counter()

    async def one_connection() -> None:
        conn = await Connection.open("127.0.0.1", port, asyncio.Semaphore(1))
        try:
            for n in numbers:
                sent = time.perf_counter()
                reply = await conn.send("ups@corp.example", (TO,), payload(n, distinct), refused)
                if reply is not None and reply[0] == 250:
                    latencies.append((time.perf_counter() - sent) * 1000)
                else:
                    refused[str(reply)] += 1
        finally:
            await conn.close(quit_first=True)

    started = time.perf_counter()
    await asyncio.gather(*(one_connection() for _ in range(connections)))
    wall = time.perf_counter() - started
    if refused:
        print(f"  refused: {dict(refused)}", file=sys.stderr)
    return {
        "rate": len(latencies) / wall,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "accepted": len(latencies),
    }


async def delivered(platform: PlatformClient, expected: int, cap: float = 60.0) -> float:
    """The requests the platform got, once `expected` came (or `cap` seconds passed) and then
    half a second more without one: nothing else is sent."""
    deadline = time.monotonic() + cap
    while (requests := (await platform.stats())["requests"]) < expected:
        if time.monotonic() > deadline:
            return requests
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    return (await platform.stats())["requests"]


async def run(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    distinct, window = kind.startswith("distinct"), kind.endswith(" on")
    messages = args.messages // 2 if distinct else args.messages
    platform, platform_port = await start_helper("fakeplatform.py", "--max-seconds", 3600)
    try:
        gateway, port = await start(workdir, platform_port, args, window)
        try:
            cpu = CpuWindow((gateway.pid,))
            figures = await load(port, messages, args.connections, distinct)
            cpu.close()
            figures["cpu_us"] = cpu.server / max(figures["accepted"], 1) * 1e6
            figures["requests"] = await delivered(
                PlatformClient(platform_port), 1 if window and not distinct else messages
            )
        finally:
            await gateway.stop()
    finally:
        await platform.stop()
    return figures


async def main(args: argparse.Namespace) -> None:
    kinds = tuple(kind for kind in KINDS if kind.startswith(args.only))
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smtp2pulse-storm-") as tmp:
        for round_no in range(args.rounds):
            order = kinds if round_no % 2 == 0 else tuple(reversed(kinds))
            for kind in order:
                workdir = Path(tmp) / f"{round_no}-{kind.replace(' ', '-')}"
                workdir.mkdir()
                figures = await run(kind, args, workdir)
                results[kind].append(figures)
                print(
                    f"round {round_no + 1} {kind}: {figures['rate']:.0f} msgs/s,"
                    f" p50 {figures['p50']:.1f} ms, p99 {figures['p99']:.1f} ms,"
                    f" {figures['cpu_us']:.0f} µs CPU/msg, {figures['requests']:.0f} requests",
                    file=sys.stderr,
                )
    print(f"\n{args.rounds} rounds, {time.monotonic() - began:.0f} s\n")
    print("| run | msgs | msgs/s | p50 / p99 ms | CPU µs/msg | requests at the platform |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind in kinds:
        rows = results[kind]

        def med(key: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.median(row[key] for row in rows)

        print(
            f"| {kind} | {med('accepted'):,.0f} | {med('rate'):,.0f} |"
            f" {med('p50'):.1f} / {med('p99'):.1f} | {med('cpu_us'):,.0f} |"
            f" {med('requests'):,.0f} |"
        )
    for name in sorted({kind.split()[0] for kind in kinds}):
        ratios = [
            on["rate"] / off["rate"]
            for on, off in zip(results[f"{name} on"], results[f"{name} off"], strict=True)
        ]
        print(
            f"\n{name}: rate on/off {statistics.median(ratios):.2f}"
            f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--only", choices=("storm", "distinct", ""), default="", help="one pair")
    args = parser.parse_args()
    # What harness.write_config reads besides.
    args.keep_limits, args.many_connections, args.api_concurrency = False, 0, 8
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
