"""One command, one table: smtp2pulse against aiosmtpd's Sink, same load, same run.

    python bench/run.py                 # 3 rounds of every scenario (about 10 minutes)
    python bench/run.py --quick         # a smoke run, well under a minute
    python bench/run.py --only apg      # SQLite, PostgreSQL, two gateways on one database
    python bench/run.py --memory        # also RSS after 10k and 50k messages

Each round runs every scenario twice, Sink first then the gateway, each against fresh
processes (and a fresh spool), so that drift on a shared machine hits both alike; the table
shows medians over rounds and the gateway's rate as a ratio of Sink's.
The helpers (processes, gateway, platform) are in harness.py, PostgreSQL in pgcluster.py, the
table in report.py. See bench/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

# Child, PlatformClient, expected_keys, proc_status, start_gateway and start_helper are also
# imported from here by crashes.py and hostile.py: re-exported until those import harness.
from harness import (
    Child,
    PlatformClient,
    expected_keys,
    measured_load,
    proc_status,
    start_gateway,
    start_helper,
)
from loadgen import LoadResult, LoadSpec, percentile
from memory import memory_run
from outcome import (
    NAN,
    Outcome,
    check_exactly_once,
    cpu_fields,
    delivery_timing,
    gateway_problems,
    idle_latencies,
)
from pgcluster import Postgres
from report import Row, notes, table

# --- scenarios -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    messages: int
    connections: int
    latency: float = 0.0  # the fake platform's delay before each reply, seconds
    e2e: bool = False  # rate = deliveries / (last delivery - first MAIL)
    pace: float = 0.0  # > 0: idle-latency mode, one message at a time, this far apart
    batch_size: int = 1  # > 1: the gateway's api.batch_size (send-list-messages)
    postgres: bool = False  # the spool in PostgreSQL (spool.url), a fresh database a round
    gateways: int = 1  # gateways on that one database, the load split between them

    @property
    def system(self) -> str:
        name = "smtp2pulse pg" if self.postgres else "smtp2pulse"
        return f"{self.gateways}× {name}" if self.gateways > 1 else name


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    n, e2e_n, idle_n = (200, 200, 10) if args.quick else (args.messages, args.e2e_messages, 50)
    c = args.connections
    chosen = [
        Scenario("a", f"a accept {n}×{c}c", n, c),
        Scenario("b", f"b accept {n}×{args.many_connections}c", n, args.many_connections),
        Scenario(
            "c",
            f"c e2e {e2e_n}×{c}c @{args.latency * 1000:.0f}ms",
            e2e_n,
            c,
            latency=args.latency,
            e2e=True,
        ),
        Scenario(
            "e",
            f"e e2e batches of {args.batch_size} {e2e_n}×{c}c @{args.latency * 1000:.0f}ms",
            e2e_n,
            c,
            latency=args.latency,
            e2e=True,
            batch_size=args.batch_size,
        ),
        Scenario("d", f"d idle {idle_n}×1c /{args.pace * 1000:.0f}ms", idle_n, 1, pace=args.pace),
        Scenario("p", f"p accept, PostgreSQL spool {n}×{c}c", n, c, postgres=True),
        Scenario(
            "g", f"g accept, 2 gateways on one PostgreSQL {n}×{c}c", n, c, postgres=True, gateways=2
        ),
    ]
    return [s for s in chosen if s.key in args.only]


def load_spec(port: int, scenario: Scenario, run_id: str, args: argparse.Namespace) -> LoadSpec:
    return LoadSpec(
        "127.0.0.1",
        port,
        messages=scenario.messages,
        connections=scenario.connections,
        recipients=args.recipients,
        body_size=args.body_size,
        charset=args.charset,
        run_id=run_id,
        pace=scenario.pace,
        deadline=args.max_load_seconds,
    )


def split_specs(
    ports: Sequence[int], scenario: Scenario, run_id: str, args: argparse.Namespace
) -> list[LoadSpec]:
    """One load per gateway, the messages and connections shared out evenly."""
    k = len(ports)
    return [
        load_spec(
            port,
            replace(
                scenario,
                messages=scenario.messages // k + (i < scenario.messages % k),
                connections=max(1, scenario.connections // k),
            ),
            f"{run_id}g{i}" if k > 1 else run_id,
            args,
        )
        for i, port in enumerate(ports)
    ]


def run_id(scenario: Scenario, round_no: int, system: str) -> str:
    return f"{scenario.key}{round_no}{system[0]}{secrets.token_hex(2)}"


# --- one system, one scenario, one round ----------------------------------------------------


async def sink_round(scenario: Scenario, round_no: int, args: argparse.Namespace) -> Outcome:
    child, port = await start_helper("sink.py", "--max-seconds", 3600)
    try:
        load, overflows, cpu = await measured_load(
            load_spec(port, scenario, run_id(scenario, round_no, "sink"), args), child.pid
        )
        rss = proc_status(child.pid)["VmHWM"]
    finally:
        await child.stop()
    return Outcome(
        rate=load.rate,
        p50=load.p50,
        p99=load.p99,
        rss_mb=rss,
        overflows=overflows,
        refused=load.refused,
        **cpu_fields(load, cpu),
    )


async def gateway_round(
    scenario: Scenario,
    round_no: int,
    args: argparse.Namespace,
    workdir: Path,
    postgres: Postgres | None = None,
) -> tuple[Outcome, LoadResult, dict[str, list[float]]]:
    """The scenario's gateways (one, or several on one database) against one fake platform."""
    platform, platform_port = await start_helper(
        "fakeplatform.py", "--latency", scenario.latency, "--fail", args.fail, "--max-seconds", 3600
    )
    client = PlatformClient(platform_port)
    url = await postgres.database() if postgres is not None and scenario.postgres else None
    gateways: list[tuple[Child, int, Path]] = []
    codes: list[int | None] = []
    try:
        try:
            for number in range(scenario.gateways):
                own = workdir / f"gateway{number}"
                own.mkdir()
                gateways.append(
                    await start_gateway(own, platform_port, args, url, scenario.batch_size)
                )
            if scenario.pace:
                await asyncio.sleep(1.0)  # "idle": the worker has gone back to sleep
            load, overflows, cpu = await measured_load(
                split_specs(
                    [port for _, port, _ in gateways],
                    scenario,
                    run_id(scenario, round_no, "gateway"),
                    args,
                ),
                [child.pid for child, _, _ in gateways],
                postgres.pid if url and postgres is not None else None,
            )
            expected = len(expected_keys(load))
            await client.wait_for(expected, cap=max(60.0, expected / 20))
            rss = sum(proc_status(child.pid)["VmHWM"] for child, _, _ in gateways)
        finally:
            codes = [await child.stop() for child, _, _ in gateways]
        # Read after the gateways exited: every send they ever made, their drain included.
        deliveries = await client.deliveries()
        stats = await client.stats()
        transactions = await postgres.transactions(url) if url and postgres else NAN
    finally:
        await platform.stop()
    problems = [
        problem
        for (_, _, log), code in zip(gateways, codes, strict=True)
        for problem in gateway_problems(code, log, stats)
    ]
    outcome = Outcome(
        rate=load.rate,
        p50=load.p50,
        p99=load.p99,
        rss_mb=rss,
        overflows=overflows,
        refused=load.refused,
        problems=list(dict.fromkeys(problems)),
        **cpu_fields(load, cpu),
    )
    check_exactly_once(outcome, load, deliveries)
    delivery_timing(outcome, load, deliveries)
    outcome.requests, outcome.unique = stats["requests"], stats["unique"]
    outcome.transactions = transactions
    outcome.batch_requests = stats.get("batch_requests", NAN)
    outcome.batch_messages = stats.get("batch_messages", NAN)
    if scenario.e2e:
        outcome.accept_rate = outcome.rate
        outcome.rate = outcome.e2e
    return outcome, load, deliveries


# --- the whole run --------------------------------------------------------------------------


async def run_rounds(args: argparse.Namespace, spool_root: Path) -> dict[Row, list[Outcome]]:
    postgres = None
    if any(s.postgres for s in scenarios(args)) or args.postgres:
        try:
            postgres = Postgres()
        except (RuntimeError, OSError) as exc:  # no server binaries: the rest still runs
            print(f"PostgreSQL scenarios skipped: {exc}", file=sys.stderr)
            args.only, args.postgres = args.only.replace("p", "").replace("g", ""), False
    try:
        return await _rounds(args, spool_root, postgres)
    finally:
        if postgres is not None:
            postgres.stop()


async def _rounds(
    args: argparse.Namespace, spool_root: Path, postgres: Postgres | None
) -> dict[Row, list[Outcome]]:
    results: dict[Row, list[Outcome]] = {}
    for round_no in range(1, args.rounds + 1):
        for scenario in scenarios(args):
            print(f"round {round_no}/{args.rounds}: {scenario.title}", file=sys.stderr)
            title = _title(scenario, "MAIL→250" if scenario.pace else "")
            sink = await sink_round(scenario, round_no, args)
            results.setdefault((title, "sink"), []).append(sink)
            systems = [scenario]
            if args.postgres and not scenario.postgres and not scenario.pace:
                systems.append(replace(scenario, postgres=True))
            for system in systems:
                workdir = Path(
                    tempfile.mkdtemp(prefix=f"{scenario.key}{round_no}-", dir=spool_root)
                )
                gateway, load, deliveries = await gateway_round(
                    system, round_no, args, workdir, postgres
                )
                results.setdefault((title, system.system), []).append(gateway)
            if scenario.pace:
                latencies = idle_latencies(load, deliveries)
                results.setdefault((_title(scenario, "250→platform"), scenario.system), []).append(
                    replace(
                        gateway,
                        p50=percentile(latencies, 50),
                        p99=percentile(latencies, 99),
                        checked=False,
                        problems=[],
                        refused=Counter(),
                    )
                )
    return results


def _title(scenario: Scenario, label: str) -> str:
    return f"{scenario.title} {label}".strip()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="smtp2pulse vs aiosmtpd Sink, one table")
    add = parser.add_argument
    add("--messages", type=int, default=2000, help="messages in a, b, p and g")
    add("--connections", type=int, default=20, help="connections in a, c, e, p, g and --memory")
    add("--many-connections", type=int, default=200, help="connections in scenario b")
    add("--e2e-messages", type=int, default=10_000, help="messages in c and e")
    add("--latency", type=float, default=0.05, help="platform reply delay in c and e, seconds")
    add("--pace", type=float, default=0.1, help="gap between idle messages in d, seconds")
    add("--rounds", type=int, default=3)
    add("--recipients", type=int, default=1, help="recipients per message")
    add("--body-size", type=int, default=1024, help="body bytes per message")
    add("--charset", choices=("utf-8", "cp1251", "ascii"), default="utf-8")
    add("--fail", type=float, default=0.0, help="fraction of platform replies that are 503")
    add("--api-concurrency", type=int, default=8, help="gateway api.max_concurrency")
    add(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="gateway log.level (its log goes to a file in the spool directory)",
    )
    add(
        "--spool-dir",
        type=Path,
        default=None,
        help="where the gateway's temporary spools go (default: the system temp dir); "
        "the fsync behind every 250 costs what this disk makes it cost",
    )
    add(
        "--keep-limits",
        action="store_true",
        help="keep the gateway's default connection limits (else raised above the bench's)",
    )
    add("--batch-size", type=int, default=100, help="the gateway's api.batch_size in e")
    add("--only", default="abcdepg", help="scenarios to run, e.g. 'ace'")
    add("--max-load-seconds", type=float, default=600, help="cap on one load run")
    add("--memory", action="store_true", help="also RSS after 10k and 50k messages (slow)")
    add("--quick", action="store_true", help="smoke run: 200 messages, 1 round")
    add(
        "--postgres",
        action="store_true",
        help="also a, b, c and e with the spool in PostgreSQL (p and g always are; a server "
        "of Debian's postgresql package is started for the run)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
    return args


async def main(args: argparse.Namespace) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smtp2pulse-bench-", dir=args.spool_dir) as tmp:
        try:
            results = await run_rounds(args, Path(tmp))
            memory = await memory_run(args, Path(tmp)) if args.memory else []
        finally:
            await Child.stop_all()
    print(
        f"\nsmtp2pulse bench: {args.rounds} round(s), {os.cpu_count()} CPUs, "
        f"{args.recipients} rcpt/msg, {args.body_size} B {args.charset} body, "
        f"api.max_concurrency {args.api_concurrency}, took {time.monotonic() - started:.0f}s"
    )
    print("\n".join(table(results)))
    extra = notes(results, args)
    if memory:
        extra += ["memory (one gateway, platform latency 0):", *("  " + m for m in memory)]
    if extra:
        print("\nnotes:\n" + "\n".join(f"- {line}" for line in extra))


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
