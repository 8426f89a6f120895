"""One command, one table: smtp2pulse against aiosmtpd's Sink, same load, same run.

    python bench/run.py                 # 3 rounds of every scenario (a few minutes)
    python bench/run.py --quick         # a smoke run, well under a minute
    python bench/run.py --memory        # also RSS after 10k and 50k messages

Each round runs every scenario twice, Sink first then the gateway, each against fresh
processes (and a fresh spool), so that drift on a shared machine hits both alike; the table
shows medians over rounds and the gateway's rate as a ratio of Sink's.
See bench/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import math
import os
import re
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import IO, Any

import aiohttp
import yaml
from cpu import CpuWindow, children
from loadgen import LoadResult, LoadSpec, percentile, run_load

from gateway.config.model import SmtpConfig

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
LISTENING = re.compile(r"SMTP listening on 127\.0\.0\.1:(\d+)")
START_TIMEOUT = 30.0        # a helper or the gateway not up by then is a failed run
STALL_TIMEOUT = 30.0        # no new delivery for this long: stop waiting, report missing ones
EXPECTED_WARNINGS = ("is plain http",)   # the bench's platform is http:// on purpose
MB = 1024 * 1024
NAN = float("nan")


# --- scenarios -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    messages: int
    connections: int
    latency: float = 0.0      # the fake platform's delay before each reply, seconds
    e2e: bool = False         # rate = deliveries / (last delivery - first MAIL)
    pace: float = 0.0         # > 0: idle-latency mode, one message at a time, this far apart
    batch_size: int = 1       # > 1: the gateway's api.batch_size (send-list-messages)


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    n, e2e_n, idle_n = (200, 200, 10) if args.quick else (args.messages, args.e2e_messages, 50)
    c = args.connections
    chosen = [
        Scenario("a", f"a accept {n}×{c}c", n, c),
        Scenario("b", f"b accept {n}×{args.many_connections}c", n, args.many_connections),
        Scenario("c", f"c e2e {e2e_n}×{c}c @{args.latency * 1000:.0f}ms", e2e_n, c,
                 latency=args.latency, e2e=True),
        Scenario("e", f"e e2e batches of {args.batch_size} {e2e_n}×{c}c "
                 f"@{args.latency * 1000:.0f}ms", e2e_n, c, latency=args.latency, e2e=True,
                 batch_size=args.batch_size),
        Scenario("d", f"d idle {idle_n}×1c /{args.pace * 1000:.0f}ms", idle_n, 1,
                 pace=args.pace),
    ]
    return [s for s in chosen if s.key in args.only]


# --- child processes -----------------------------------------------------------------------

def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the bench dies, so nothing is left running."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class Child:
    """A process this bench started; only ever signalled by its own pid."""

    started: list[Child] = []   # noqa: RUF012 - the bench's own registry, for cleanup

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name, self.process = name, process
        self.log_writer: Child | None = None   # the process writing this one's output to a file
        Child.started.append(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def spawn(cls, name: str, argv: Sequence[str], stdout: int | IO[bytes],
                    stderr: int | IO[bytes] | None = None,
                    stdin: int = asyncio.subprocess.DEVNULL) -> Child:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=stdin, stdout=stdout, stderr=stderr, cwd=REPO,
            preexec_fn=_die_with_parent, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return cls(name, process)

    @classmethod
    async def spawn_logged(cls, name: str, argv: Sequence[str], log_path: Path) -> Child:
        """A child whose stdout and stderr go down a pipe to `cat`, which writes log_path.

        That is how a service's output reaches journald: a pipe, and another process that puts
        it on disk. Written by the child itself to a file on the spool's disk, every log line
        would wait behind the spool's fsyncs (one ext4 journal), a cost production does not
        have. `cat` ends when the child does; stop() waits for it, so the file is complete."""
        read_end, write_end = os.pipe()
        try:
            with log_path.open("wb") as log:
                writer = await cls.spawn(f"{name} log", ["cat"], stdout=log, stdin=read_end)
            child = await cls.spawn(name, argv, stdout=write_end, stderr=write_end)
        finally:
            os.close(read_end)
            os.close(write_end)
        child.log_writer = writer
        return child

    async def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM, up to `grace` seconds to exit, then SIGKILL. Returns the exit code."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                print(f"  {self.name} (pid {self.pid}) ignored SIGTERM; killing it",
                      file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await asyncio.wait_for(self.process.wait(), 10)
        if self.log_writer is not None:   # the rest of the output is on its way to the file
            try:
                await asyncio.wait_for(self.log_writer.process.wait(), 10)
            except TimeoutError:
                await self.log_writer.stop()
        return self.process.returncode

    @classmethod
    async def stop_all(cls) -> None:
        # Newest first: the gateway before the platform it is still sending to.
        for child in reversed(cls.started):
            await child.stop(grace=10)
        cls.started.clear()


async def start_helper(script: str, *args: object) -> tuple[Child, int]:
    """Start bench/<script>, which prints its port on its first stdout line."""
    child = await Child.spawn(script, [sys.executable, str(BENCH / script),
                                       *map(str, args)], stdout=asyncio.subprocess.PIPE)
    assert child.process.stdout is not None
    line = await asyncio.wait_for(child.process.stdout.readline(), START_TIMEOUT)
    if not line.strip().isdigit():
        await child.stop()
        raise RuntimeError(f"{script} did not start (said {line!r})")
    return child, int(line)


def connection_limits(args: argparse.Namespace) -> dict[str, int]:
    """The gateway's connection limits, where this version has them, raised above the bench's
    connection counts: everything comes from 127.0.0.1, and scenario b is about throughput at
    200 connections, not about the limit (--keep-limits shows the shipped defaults at work)."""
    if args.keep_limits:
        return {}
    known = {f.name for f in fields(SmtpConfig)}
    wanted = max(args.connections, args.many_connections) + 10
    return {name: wanted for name in ("max_connections", "max_connections_per_address")
            if name in known}


def write_config(workdir: Path, platform_port: int, args: argparse.Namespace,
                 spool_url: str | None = None, batch_size: int = 1) -> Path:
    config = {
        "smtp": {"listen": "127.0.0.1:0", "hostname": "bench-gateway",
                 "max_message_size": "1MiB", "max_recipients": 100,
                 "allow_networks": ["127.0.0.0/8"], "timeout": "5m",
                 **connection_limits(args)},
        "api": {"base_url": f"http://127.0.0.1:{platform_port}/api/v1/bulk",
                "token": "bench-token", "timeout": "10s",
                "max_concurrency": args.api_concurrency,
                # Only in the batch scenario; api.batch_wait stays the default.
                **({"batch_size": batch_size} if batch_size > 1 else {})},
        # A short retry: with --fail, a 503'd send comes back within the bench's patience.
        "spool": {**({"url": spool_url} if spool_url else
                     {"path": str(workdir / "spool.sqlite3")}),
                  "retry": ["1s"], "give_up_after": "1h"},
        "shutdown_timeout": "15s",
        "log": {"level": args.log_level},
        "domains": {"sms.local": {"type": "sms", "sender": "Bench"}},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


async def start_gateway(workdir: Path, platform_port: int, args: argparse.Namespace,
                        spool_url: str | None = None, batch_size: int = 1
                        ) -> tuple[Child, int, Path]:
    """`python -m gateway serve` (not dry-run); its port read from its own log line."""
    config = write_config(workdir, platform_port, args, spool_url, batch_size)
    log_path = workdir / "gateway.log"
    # Its log is read back from a file, not from a pipe to this process: reading two lines per
    # message would cost the bench's event loop CPU on the same two cores.
    child = await Child.spawn_logged(
        "gateway", [sys.executable, "-m", "gateway", "serve", "-c", str(config)], log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and child.process.returncode is None:
        match = LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return child, int(match.group(1)), log_path
        await asyncio.sleep(0.05)
    await child.stop()
    raise RuntimeError("gateway did not start:\n" + log_path.read_text(errors="replace")[-3000:])


def _one_status(pid: int) -> dict[str, float]:
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                values[name] = int(rest.split()[0]) * 1024 / MB
    return values


def proc_status(pid: int) -> dict[str, float]:
    """VmHWM (peak) and VmRSS in MB of a live process, summed with its children's: the
    gateway's sender process counts as the gateway's memory. `parts` keeps each one's VmHWM."""
    statuses = [_one_status(p) for p in (pid, *children(pid))]
    total = {name: sum(s.get(name, 0.0) for s in statuses) for name in ("VmHWM", "VmRSS")}
    return {**total, "processes": float(len(statuses)),
            **{f"VmHWM{n}": s.get("VmHWM", 0.0) for n, s in enumerate(statuses)}}


def log_problems(log_path: Path) -> list[str]:
    """WARNING/ERROR lines of a gateway log, minus the ones the bench causes on purpose."""
    lines = log_path.read_text(errors="replace").splitlines()
    return [line for line in lines
            if (" WARNING " in line or " ERROR " in line or "Traceback" in line)
            and not any(expected in line for expected in EXPECTED_WARNINGS)]


# --- the fake platform, seen from here ------------------------------------------------------

class PlatformClient:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    async def _get(self, path: str) -> Any:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.get(self.base + path) as response:
            response.raise_for_status()
            return await response.json()

    async def stats(self) -> dict[str, float]:
        return {key: float(value) for key, value in (await self._get("/stats")).items()}

    async def deliveries(self) -> dict[str, list[float]]:
        deliveries: dict[str, list[float]] = (await self._get("/deliveries"))["deliveries"]
        return deliveries

    async def wait_for(self, expected: int, cap: float) -> float:
        """Until `expected` distinct deliveries arrived; gives up after `cap` seconds, or
        STALL_TIMEOUT without progress. Returns how long it waited."""
        started = time.monotonic()
        seen, progress_at = -1.0, started
        while True:
            unique = (await self.stats())["unique"]
            now = time.monotonic()
            if unique >= expected:
                return now - started
            if unique != seen:
                seen, progress_at = unique, now
            if now - progress_at > STALL_TIMEOUT or now - started > cap:
                return now - started
            await asyncio.sleep(0.1)


# --- one system, one scenario, one round ----------------------------------------------------

@dataclass
class Outcome:
    rate: float = NAN
    p50: float = NAN
    p99: float = NAN
    rss_mb: float = NAN
    e2e: float = NAN                # messages delivered per second, first MAIL -> last arrival
    drain_s: float = NAN            # last arrival at the platform - last 250 at the client
    during: float = NAN             # deliveries at the platform per second while the load ran
    after: float = NAN              # ... and after the last 250
    overflows: int = 0              # host-wide TCP listen-queue overflows during the load
    expected: int = 0
    delivered: int = 0
    duplicates: int = 0
    missing: int = 0
    extra: int = 0
    checked: bool = False           # whether deliveries were checked at all (not for Sink)
    accept_rate: float = NAN        # accepted messages / wall time of the load (c and e)
    requests: float = NAN           # requests the platform received, 503'd ones included
    batch_requests: float = NAN     # ... of them send-list-messages
    batch_messages: float = NAN     # messages in those
    unique: float = NAN             # distinct `<marker> <sent_to>` the platform took
    accepted: int = 0               # messages answered 250
    server_cpu: float = NAN         # CPU seconds of the server (and its children) in the load
    load_cpu: float = NAN           # ... of the load generator (this process)
    steal: float = NAN              # the host's steal share meanwhile
    refused: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def load_spec(port: int, scenario: Scenario, run_id: str, args: argparse.Namespace) -> LoadSpec:
    return LoadSpec("127.0.0.1", port, messages=scenario.messages,
                    connections=scenario.connections, recipients=args.recipients,
                    body_size=args.body_size, charset=args.charset, run_id=run_id,
                    pace=scenario.pace, deadline=args.max_load_seconds)


def run_id(scenario: Scenario, round_no: int, system: str) -> str:
    return f"{scenario.key}{round_no}{system[0]}{secrets.token_hex(2)}"


def listen_overflows() -> int:
    """The kernel's TcpExt ListenOverflows counter (host-wide: others' traffic counts too)."""
    with open("/proc/net/netstat") as netstat:
        lines = [line.split() for line in netstat if line.startswith("TcpExt:")]
    names, values = lines[0], lines[1]
    return int(values[names.index("ListenOverflows")]) if "ListenOverflows" in names else 0


async def measured_load(spec: LoadSpec, server_pid: int) -> tuple[LoadResult, int, CpuWindow]:
    before = listen_overflows()
    cpu = CpuWindow(server_pid)
    load = await run_load(spec)
    return load, listen_overflows() - before, cpu.close()


def cpu_fields(load: LoadResult, cpu: CpuWindow) -> dict[str, Any]:
    return {"accepted": len(load.accepted), "server_cpu": cpu.server, "load_cpu": cpu.load,
            "steal": cpu.steal}


async def sink_round(scenario: Scenario, round_no: int, args: argparse.Namespace) -> Outcome:
    child, port = await start_helper("sink.py", "--max-seconds", 3600)
    try:
        load, overflows, cpu = await measured_load(
            load_spec(port, scenario, run_id(scenario, round_no, "sink"), args), child.pid)
        rss = proc_status(child.pid)["VmHWM"]
    finally:
        await child.stop()
    return Outcome(rate=load.rate, p50=load.p50, p99=load.p99, rss_mb=rss,
                   overflows=overflows, refused=load.refused, **cpu_fields(load, cpu))


async def gateway_round(scenario: Scenario, round_no: int, args: argparse.Namespace,
                        workdir: Path, spool_url: str | None = None
                        ) -> tuple[Outcome, LoadResult, dict[str, list[float]]]:
    platform, platform_port = await start_helper(
        "fakeplatform.py", "--latency", scenario.latency, "--fail", args.fail,
        "--max-seconds", 3600)
    client = PlatformClient(platform_port)
    try:
        gateway, port, log_path = await start_gateway(workdir, platform_port, args, spool_url,
                                                      scenario.batch_size)
        try:
            if scenario.pace:
                await asyncio.sleep(1.0)    # "idle": the worker has gone back to sleep
            load, overflows, cpu = await measured_load(
                load_spec(port, scenario, run_id(scenario, round_no, "gateway"), args),
                gateway.pid)
            expected = len(expected_keys(load))
            await client.wait_for(expected, cap=max(60.0, expected / 20))
            rss = proc_status(gateway.pid)["VmHWM"]
        finally:
            code = await gateway.stop()
        # Read after the gateway exited: every send it ever made, its drain included.
        deliveries = await client.deliveries()
        stats = await client.stats()
    finally:
        await platform.stop()
    outcome = Outcome(rate=load.rate, p50=load.p50, p99=load.p99, rss_mb=rss,
                      overflows=overflows, refused=load.refused,
                      problems=gateway_problems(code, log_path, stats), **cpu_fields(load, cpu))
    check_exactly_once(outcome, load, deliveries)
    delivery_timing(outcome, load, deliveries)
    outcome.requests, outcome.unique = stats["requests"], stats["unique"]
    outcome.batch_requests = stats.get("batch_requests", NAN)
    outcome.batch_messages = stats.get("batch_messages", NAN)
    if scenario.e2e:
        outcome.accept_rate = outcome.rate
        outcome.rate = outcome.e2e
    return outcome, load, deliveries


def expected_keys(load: LoadResult) -> set[str]:
    """What the platform must see once each: `<marker> <sent_to>` per accepted recipient."""
    return {f"{marker} {rcpt.split('@')[0]}"
            for marker, accepted in load.accepted.items() for rcpt in accepted.recipients}


def check_exactly_once(outcome: Outcome, load: LoadResult,
                       deliveries: dict[str, list[float]]) -> None:
    expected = expected_keys(load)
    outcome.checked = True
    outcome.expected = len(expected)
    outcome.delivered = sum(1 for key in expected if key in deliveries)
    outcome.missing = outcome.expected - outcome.delivered
    outcome.duplicates = sum(int(entry[0]) - 1 for entry in deliveries.values())
    # Sent but never acknowledged to the client (a session cut mid-DATA): legal, but counted.
    outcome.extra = sum(1 for key in deliveries if key not in expected)


def delivery_timing(outcome: Outcome, load: LoadResult,
                    deliveries: dict[str, list[float]]) -> None:
    """End-to-end rate, and how delivery kept pace while SMTP was busy and after it."""
    if not deliveries or not load.accepted:
        return
    arrivals = [entry[1] for entry in deliveries.values()]    # first arrival per key
    last = max(arrivals)
    last_250 = max(a.accepted_at for a in load.accepted.values())
    messages = len({key.split(" ", 1)[0] for key in deliveries})
    during = sum(1 for at in arrivals if at <= last_250)
    outcome.e2e = messages / max(last - load.first_mail, 1e-9)
    outcome.drain_s = last - last_250
    outcome.during = during / max(last_250 - load.first_mail, 1e-9)
    outcome.after = (len(arrivals) - during) / outcome.drain_s if outcome.drain_s > 0 else NAN


def idle_latencies(load: LoadResult, deliveries: dict[str, list[float]]) -> list[float]:
    """250 received by the client -> request arrived at the platform, ms, per recipient."""
    latencies = []
    for marker, accepted in load.accepted.items():
        for rcpt in accepted.recipients:
            entry = deliveries.get(f"{marker} {rcpt.split('@')[0]}")
            if entry is not None:
                latencies.append((entry[1] - accepted.accepted_at) * 1000)
    return latencies


def gateway_problems(code: int | None, log_path: Path, stats: dict[str, float]) -> list[str]:
    """Anything in one gateway run that a reader of the table should know about."""
    problems = []
    if code != 0:
        problems.append(f"gateway exited with {code}")
    lines = log_problems(log_path)
    if lines:
        problems.append(f"{len(lines)} warning/error log lines, first: {lines[0][:200]}")
    if stats.get("failed"):
        problems.append(f"platform answered {stats['failed']:.0f} requests with 503 (--fail)")
    if stats.get("unmarked"):
        problems.append(f"{stats['unmarked']:.0f} deliveries without a bench marker")
    return problems


# --- the whole run --------------------------------------------------------------------------

Row = tuple[str, str]   # (scenario title, system)


class Postgres:
    """--postgres: a real PostgreSQL server for the run (tests/pgserver.py), a fresh database
    for each round, on the same two cores as everything else."""

    def __init__(self) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.pgserver import PgServer
        self.server = PgServer()
        self.server.init()
        self.server.start()
        self._count = 0

    async def database(self) -> str:
        import asyncpg
        self._count += 1
        name = f"bench{self._count}"
        conn = await asyncpg.connect(self.server.url)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        return self.server.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        self.server.remove()


async def run_rounds(args: argparse.Namespace, spool_root: Path) -> dict[Row, list[Outcome]]:
    postgres = Postgres() if args.postgres else None
    try:
        return await _rounds(args, spool_root, postgres)
    finally:
        if postgres is not None:
            postgres.stop()


async def _rounds(args: argparse.Namespace, spool_root: Path, postgres: Postgres | None
                  ) -> dict[Row, list[Outcome]]:
    results: dict[Row, list[Outcome]] = {}
    for round_no in range(1, args.rounds + 1):
        for scenario in scenarios(args):
            print(f"round {round_no}/{args.rounds}: {scenario.title}", file=sys.stderr)
            sink = await sink_round(scenario, round_no, args)
            workdir = Path(tempfile.mkdtemp(prefix=f"{scenario.key}{round_no}-",
                                            dir=spool_root))
            gateway, load, deliveries = await gateway_round(scenario, round_no, args, workdir)
            label = "MAIL→250" if scenario.pace else ""
            results.setdefault((_title(scenario, label), "sink"), []).append(sink)
            results.setdefault((_title(scenario, label), "smtp2pulse"), []).append(gateway)
            if postgres is not None and not scenario.pace:
                url = await postgres.database()
                on_pg, _, _ = await gateway_round(scenario, round_no, args, workdir, url)
                results.setdefault((_title(scenario, label), "smtp2pulse-pg"), []).append(on_pg)
            if scenario.pace:
                latencies = idle_latencies(load, deliveries)
                results.setdefault((_title(scenario, "250→platform"), "smtp2pulse"), []).append(
                    replace(gateway, p50=percentile(latencies, 50), p99=percentile(latencies, 99),
                            checked=False, problems=[], refused=Counter()))
    return results


def _title(scenario: Scenario, label: str) -> str:
    return f"{scenario.title} {label}".strip()


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
                scenario = Scenario("m", "memory", total - done, args.connections)
                load = await run_load(load_spec(port, scenario, f"m{total}", args))
                done += len(load.accepted)
                await client.wait_for(done * args.recipients, cap=max(60.0, total / 20))
                status = proc_status(gateway.pid)
                parts = " + ".join(f"{status[f'VmHWM{n}']:.1f}"
                                   for n in range(int(status["processes"])))
                lines.append(f"after {done} messages: RSS {status['VmRSS']:.1f} MB, peak "
                             f"{status['VmHWM']:.1f} MB ({parts}), spool {_spool_mb(workdir)}, "
                             f"{load.rate:.0f} msgs/s accepted in this step")
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


# --- the table ------------------------------------------------------------------------------

def _median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]   # a round without data is left out
    return statistics.median(finite) if finite else NAN


def _num(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _once(outcomes: list[Outcome]) -> str:
    if not all(o.checked for o in outcomes):
        return "-"
    total = Counter[str]()
    for o in outcomes:
        total.update(expected=o.expected, delivered=o.delivered, dup=o.duplicates,
                     miss=o.missing, extra=o.extra)
    text = f"{total['delivered']}/{total['expected']} dup {total['dup']} miss {total['miss']}"
    return text + (f" extra {total['extra']}" if total["extra"] else "")


def table(results: dict[Row, list[Outcome]]) -> list[str]:
    head = ("scenario", "system", "msgs/s", "×sink", "CPU µs/msg", "p50 ms", "p99 ms",
            "peak RSS MB", "exactly once, all rounds (delivered/accepted)")
    rows = [head]
    for (title, system), outcomes in results.items():
        rate = _median([o.rate for o in outcomes])
        sink = results.get((title, "sink"), [])
        paced = "idle" in title     # a paced run's rate is the pace, not the server's
        rows.append((title, system, "-" if paced else _num(rate, 0),
                     "-" if paced else _num(paired_ratio(outcomes, sink, "rate"), 2),
                     "-" if paced else _num(_median([_per_message(o.server_cpu, o)
                                                     for o in outcomes]), 0),
                     _num(_median([o.p50 for o in outcomes])),
                     _num(_median([o.p99 for o in outcomes])),
                     _num(_median([o.rss_mb for o in outcomes])), _once(outcomes)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    align: list[Callable[[str, int], str]] = [str.ljust, str.ljust] + [str.rjust] * 6 + [str.ljust]
    return ["  ".join(align[i](cell, widths[i]) for i, cell in enumerate(row)).rstrip()
            for row in rows]


def paired_ratio(outcomes: list[Outcome], sink: list[Outcome], name: str) -> float:
    """The median over rounds of each round's gateway figure / that round's Sink rate.

    Each gateway run is paired with the Sink run just before it: the host's speed drifts by a
    third within minutes, and a pair shares most of the drift where medians taken apart do not.
    """
    return _median([getattr(o, name) / s.rate for o, s in zip(outcomes, sink, strict=False)])


def _rounds_note(outcomes: list[Outcome], sink: list[Outcome], name: str) -> str:
    return ", ".join(_num(getattr(o, name) / s.rate, 2)
                     for o, s in zip(outcomes, sink, strict=False))


def _per_message(seconds: float, outcome: Outcome) -> float:
    """µs of CPU per message answered 250 during the load."""
    return seconds / outcome.accepted * 1e6 if outcome.accepted else NAN


def _cpu_note(outcomes: list[Outcome], sink: list[Outcome]) -> str:
    server = _median([_per_message(o.server_cpu, o) for o in outcomes])
    sink_server = _median([_per_message(o.server_cpu, o) for o in sink])
    return (f"CPU during the load: server {_num(server, 0)} µs/msg = "
            f"{_num(server / sink_server, 2)}× Sink's, load generator "
            f"{_num(_median([_per_message(o.load_cpu, o) for o in outcomes]), 0)} µs/msg; "
            f"host steal {_num(100 * _median([o.steal for o in outcomes]))}%")


def _delivery_note(outcomes: list[Outcome]) -> str:
    def med(name: str, digits: int = 0) -> str:
        return _num(_median([getattr(o, name) for o in outcomes]), digits)
    return (f"end to end {med('e2e')} msgs/s (first MAIL → last delivery); deliveries at the "
            f"platform {med('during')}/s while the load ran, {med('after')}/s after it; the "
            f"last came {med('drain_s', 2)}s after the last 250")


def _batch_note(outcomes: list[Outcome], sink: list[Outcome]) -> str:
    """Accepting next to Sink, and requests per delivered message (c: one; e: batches)."""
    accept = _median([o.accept_rate for o in outcomes])
    per_message = _median([o.requests / o.unique if o.unique else NAN for o in outcomes])
    text = (f"accepting {_num(accept, 0)} msgs/s = "
            f"{_num(paired_ratio(outcomes, sink, 'accept_rate'), 2)}×sink (rounds: "
            f"{_rounds_note(outcomes, sink, 'accept_rate')}); "
            f"{_num(per_message, 4)} requests per delivered message "
            f"({_num(_median([o.requests for o in outcomes]), 0)} requests")
    batches = _median([o.batch_requests for o in outcomes])
    if batches and not math.isnan(batches):
        size = _median([o.batch_messages / o.batch_requests if o.batch_requests else NAN
                        for o in outcomes])
        text += f", {_num(batches, 0)} of them batches of {_num(size)} on average"
    return text + ")"


def notes(results: dict[Row, list[Outcome]], args: argparse.Namespace) -> list[str]:
    lines = []
    for (title, system), outcomes in results.items():
        where = f"{title} / {system}"
        if system.startswith("smtp2pulse") and "idle" not in title:
            lines.append(f"{where}: {_delivery_note(outcomes)}")
            sink = results.get((title, "sink"), [])
            lines.append(f"{where}: ×sink by round {_rounds_note(outcomes, sink, 'rate')}; "
                         f"{_cpu_note(outcomes, sink)}")
        if title.startswith("c ") and system == "smtp2pulse" and args.latency:
            ceiling = args.api_concurrency / args.latency
            lines.append(f"{where}: ceiling api.max_concurrency / latency = {ceiling:.0f} "
                         f"requests/s = {ceiling / args.recipients:.0f} msgs/s")
        if system.startswith("smtp2pulse") and title[:2] in ("c ", "e "):
            lines.append(f"{where}: {_batch_note(outcomes, results.get((title, 'sink'), []))}")
        refused = sum((o.refused for o in outcomes), Counter[str]())
        if refused:
            lines.append(f"{where}: non-250 replies and errors {dict(refused)}")
        overflows = sum(o.overflows for o in outcomes)
        if overflows:
            lines.append(f"{where}: host TCP ListenOverflows +{overflows} during the load")
        for round_no, outcome in enumerate(outcomes, 1):
            lines += [f"{where} round {round_no}: {p}" for p in outcome.problems]
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="smtp2pulse vs aiosmtpd Sink, one table")
    add = parser.add_argument
    add("--messages", type=int, default=2000, help="messages in scenarios a and b")
    add("--connections", type=int, default=20, help="connections in a, c and --memory")
    add("--many-connections", type=int, default=200, help="connections in scenario b")
    add("--e2e-messages", type=int, default=10_000, help="messages in scenario c")
    add("--latency", type=float, default=0.05, help="platform reply delay in c, seconds")
    add("--pace", type=float, default=0.1, help="gap between idle messages in d, seconds")
    add("--rounds", type=int, default=3)
    add("--recipients", type=int, default=1, help="recipients per message")
    add("--body-size", type=int, default=1024, help="body bytes per message")
    add("--charset", choices=("utf-8", "cp1251", "ascii"), default="utf-8")
    add("--fail", type=float, default=0.0, help="fraction of platform replies that are 503")
    add("--api-concurrency", type=int, default=8, help="gateway api.max_concurrency")
    add("--log-level", default="info", choices=("debug", "info", "warning", "error"),
        help="gateway log.level (its log goes to a file in the spool directory)")
    add("--spool-dir", type=Path, default=None,
        help="where the gateway's temporary spools go (default: the system temp dir); "
             "the fsync behind every 250 costs what this disk makes it cost")
    add("--keep-limits", action="store_true",
        help="keep the gateway's default connection limits (else raised above the bench's)")
    add("--batch-size", type=int, default=100, help="the gateway's api.batch_size in e")
    add("--only", default="abcde", help="scenarios to run, e.g. 'ace'")
    add("--max-load-seconds", type=float, default=600, help="cap on one load run")
    add("--memory", action="store_true", help="also RSS after 10k and 50k messages (slow)")
    add("--quick", action="store_true", help="smoke run: 200 messages, 1 round")
    add("--postgres", action="store_true",
        help="also each scenario with the spool in PostgreSQL (spool.url; a server of Debian's "
             "postgresql package is started for the run)")
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
    print(f"\nsmtp2pulse bench: {args.rounds} round(s), {os.cpu_count()} CPUs, "
          f"{args.recipients} rcpt/msg, {args.body_size} B {args.charset} body, "
          f"api.max_concurrency {args.api_concurrency}, took {time.monotonic() - started:.0f}s")
    print("\n".join(table(results)))
    extra = notes(results, args)
    if memory:
        extra += ["memory (one gateway, platform latency 0):", *("  " + m for m in memory)]
    if extra:
        print("\nnotes:\n" + "\n".join(f"- {line}" for line in extra))


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
