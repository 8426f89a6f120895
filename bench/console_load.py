"""Does an open console slow the accept path? The real daemon (dry run) on a spool already
holding 10,000 deliveries of today, SMTP load on it, and the same load again while HTTP clients
fetch the console's pages as fast as they are answered: its main page (counts, bill, chart),
a search by subject words and a deep page of the listing. Rounds alternate, quiet and hammered,
and the medians are printed: accepted messages a second, the 250's latency, pages a second and
a page's latency. Then, without SMTP load, the daemon's CPU time per page served (its
/proc counters, idle subtracted), which the machine's other load does not blur.

    python bench/console_load.py                       # 10,000 deliveries, 3 rounds of each
    python bench/console_load.py --deliveries 20000 --rounds 5 --messages 3000 --pages 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml
from loadgen import LoadSpec, run_load
from screenshot import TEXTS, config, free_port, wait_healthy

from gateway.spool.rows import IncomingMessage, NewDelivery, Result
from gateway.spool.sqlite.store import SqliteSpool
from gateway.spool.states import State

BATCH = 500  # accepts a group commit takes at once while seeding


async def seed(path: Path, deliveries: int) -> None:
    """Today's deliveries, through the spool's interface: mostly sent, some failed or waiting."""
    spool = SqliteSpool(path)
    await spool.start()
    rng = random.Random(35)
    for start in range(0, deliveries, BATCH):
        batch = []
        for n in range(start, min(start + BATCH, deliveries)):
            number = f"7900{n:07d}"
            text = rng.choice(TEXTS)
            request = {"type": "sms", "sender": "MyShop", "sent_to": number, "sent_text": text}
            batch.append(
                IncomingMessage(
                    "crm@example.com",
                    "10.0.0.5",
                    "crm",
                    b"x",
                    (NewDelivery(f"{number}@sms.local", request),),
                    subject=text.split(".")[0],
                )
            )
        await asyncio.gather(*(spool.accept(m) for m in batch))
        leased = await spool.lease(BATCH, 60)
        await spool.record(
            *(
                Result(d.id, State.SENT, time.time(), "sent", "p", f"p-{d.id}")
                if rng.random() < 0.95
                else Result(d.id, State.FAILED, time.time(), "failed", "gave up: HTTP 503")
                for d in leased[: int(len(leased) * 0.98)]  # the rest stays leased: waiting
            )
        )
    await spool.stop()


KINDS = ("main", "search", "listing")


async def hammer(
    base: str, stop: asyncio.Event, latencies: list[float], kinds: tuple[str, ...] = KINDS
) -> None:
    """One client fetching the console's pages one after another until told to stop: the main
    page, a search, and the next page of the listing of sent deliveries (paging through all of
    them, then from the start again)."""
    listing = "/?state=sent"
    async with aiohttp.ClientSession() as session:
        n = 0
        while not stop.is_set():
            kind = kinds[n % len(kinds)]
            path = {"main": "/", "search": "/?q=order+4417", "listing": listing}[kind]
            started = time.perf_counter()
            async with session.get(base + path) as response:
                html = await response.text()
                assert response.status == 200, response.status
            latencies.append((time.perf_counter() - started) * 1000)
            if path == listing:
                older = re.search(r'href="(/\?[^"]*before=[^"]*)" id="older"', html)
                listing = older.group(1).replace("&amp;", "&") if older else "/?state=sent"
            n += 1


async def round_(port: int, base: str, messages: int, pages: int) -> dict[str, float]:
    stop = asyncio.Event()
    latencies: list[float] = []
    clients = [asyncio.create_task(hammer(base, stop, latencies)) for _ in range(pages)]
    started = time.perf_counter()
    load = await run_load(LoadSpec("127.0.0.1", port, messages=messages, connections=10))
    wall = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*clients)
    return {
        "rate": load.rate,
        "p50": load.p50,
        "p99": load.p99,
        "pages_per_s": len(latencies) / wall,
        "page_ms": statistics.median(latencies) if latencies else 0.0,
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def cpu_during(
    pid: int, base: str, clients: int, seconds: float, kinds: tuple[str, ...] = KINDS
) -> tuple[float, float]:
    """The daemon's CPU seconds while `clients` fetch pages for `seconds`, and the pages."""
    stop = asyncio.Event()
    latencies: list[float] = []
    before = cpu_seconds(pid)
    tasks = [asyncio.create_task(hammer(base, stop, latencies, kinds)) for _ in range(clients)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    return cpu_seconds(pid) - before, float(len(latencies))


async def measure(args: argparse.Namespace, pid: int, smtp_port: int, base: str) -> None:
    await round_(smtp_port, base, 300, 0)  # warm up
    quiet: list[dict[str, float]] = []
    busy: list[dict[str, float]] = []
    for r in range(args.rounds):
        quiet.append(await round_(smtp_port, base, args.messages, 0))
        busy.append(await round_(smtp_port, base, args.messages, args.pages))
        print(f"round {r + 1}: quiet {quiet[-1]}\n         hammered {busy[-1]}")
    idle, _ = await cpu_during(pid, base, 0, args.seconds)
    print(f"daemon CPU, no SMTP load, {args.seconds:.0f} s idle: {idle:.2f} s")
    for kinds in ((kind,) for kind in KINDS):
        used, pages = await cpu_during(pid, base, args.pages, args.seconds, kinds)
        print(
            f"  {kinds[0]:>8} pages: {pages:.0f} in {args.seconds:.0f} s, {used:.2f} s of CPU"
            f" = {(used - idle) / max(pages, 1) * 1000:.1f} ms a page"
        )
    for name, rounds in (("quiet", quiet), (f"{args.pages} page clients", busy)):
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        print(
            f"{name:>16}: {med['rate']:.0f} msg/s accepted, 250 p50 {med['p50']:.1f} ms"
            f" p99 {med['p99']:.1f} ms; {med['pages_per_s']:.1f} pages/s,"
            f" page median {med['page_ms']:.0f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=2000, help="per round")
    parser.add_argument("--pages", type=int, default=4, help="HTTP clients fetching pages")
    parser.add_argument("--seconds", type=float, default=20.0, help="of the CPU measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        spool = tmp / "spool.sqlite3"
        started = time.perf_counter()
        asyncio.run(seed(spool, args.deliveries))
        print(f"seeded {args.deliveries} deliveries in {time.perf_counter() - started:.0f}s")
        smtp_port, http_port = free_port(), free_port()
        settings = config(spool, smtp_port, http_port, False)
        settings["smtp"] = {"listen": f"127.0.0.1:{smtp_port}", "max_connections": 200}
        (tmp / "config.yaml").write_text(yaml.safe_dump(settings))
        daemon = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "-c", str(tmp / "config.yaml")],
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{http_port}"
            wait_healthy(base + "/healthz")
            asyncio.run(measure(args, daemon.pid, smtp_port, base))
        finally:
            daemon.terminate()
            daemon.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
