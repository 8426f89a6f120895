"""What the bench's scripts share: the processes they start, the gateway they configure, the
fake platform they ask, and the load they measure (a throwaway PostgreSQL server: pgcluster.py).

run.py (the scenarios), attacks.py, crashes.py and hostile.py import from here. Every process
started here is a `Child`, stopped by its own pid; none outlives the bench (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import IO, Any

import aiohttp
import yaml
from cpu import CpuWindow, children
from loadgen import LoadResult, LoadSpec, run_load

from gateway.config.model import SmtpConfig

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
LISTENING = re.compile(r"SMTP listening on 127\.0\.0\.1:(\d+)")
START_TIMEOUT = 30.0  # a helper or the gateway not up by then is a failed run
STALL_TIMEOUT = 30.0  # no new delivery for this long: stop waiting, report missing ones
EXPECTED_WARNINGS = ("is plain http",)  # the bench's platform is http:// on purpose
MB = 1024 * 1024


# --- child processes -----------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the bench dies, so nothing is left running."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class Child:
    """A process this bench started; only ever signalled by its own pid."""

    started: list[Child] = []  # noqa: RUF012 - the bench's own registry, for cleanup

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name, self.process = name, process
        self.log_writer: Child | None = None  # the process writing this one's output to a file
        Child.started.append(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def spawn(
        cls,
        name: str,
        argv: Sequence[str],
        stdout: int | IO[bytes],
        stderr: int | IO[bytes] | None = None,
        stdin: int = asyncio.subprocess.DEVNULL,
    ) -> Child:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=REPO,
            preexec_fn=_die_with_parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
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
                print(
                    f"  {self.name} (pid {self.pid}) ignored SIGTERM; killing it", file=sys.stderr
                )
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await asyncio.wait_for(self.process.wait(), 10)
        if self.log_writer is not None:  # the rest of the output is on its way to the file
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
    child = await Child.spawn(
        script,
        [sys.executable, str(BENCH / script), *map(str, args)],
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.process.stdout is not None
    line = await asyncio.wait_for(child.process.stdout.readline(), START_TIMEOUT)
    if not line.strip().isdigit():
        await child.stop()
        raise RuntimeError(f"{script} did not start (said {line!r})")
    return child, int(line)


# --- the gateway ---------------------------------------------------------------------------


def connection_limits(args: argparse.Namespace) -> dict[str, int]:
    """The gateway's connection limits, where this version has them, raised above the bench's
    connection counts: everything comes from 127.0.0.1, and scenario b is about throughput at
    200 connections, not about the limit (--keep-limits shows the shipped defaults at work)."""
    if args.keep_limits:
        return {}
    known = {f.name for f in fields(SmtpConfig)}
    wanted = max(args.connections, args.many_connections) + 10
    return {
        name: wanted for name in ("max_connections", "max_connections_per_address") if name in known
    }


def write_config(
    workdir: Path,
    platform_port: int,
    args: argparse.Namespace,
    spool_url: str | None = None,
    batch_size: int = 1,
) -> Path:
    config = {
        "smtp": {
            "listen": "127.0.0.1:0",
            "hostname": "bench-gateway",
            "max_message_size": "1MiB",
            "max_recipients": 100,
            "allow_networks": ["127.0.0.0/8"],
            "timeout": "5m",
            **connection_limits(args),
        },
        "api": {
            "base_url": f"http://127.0.0.1:{platform_port}/api/v1/bulk",
            "token": "bench-token",
            "timeout": "10s",
            "max_concurrency": args.api_concurrency,
            # Only in the batch scenario; api.batch_wait stays the default.
            **({"batch_size": batch_size} if batch_size > 1 else {}),
        },
        # A short retry: with --fail, a 503'd send comes back within the bench's patience.
        "spool": {
            **({"url": spool_url} if spool_url else {"path": str(workdir / "spool.sqlite3")}),
            "retry": ["1s"],
            "give_up_after": "1h",
        },
        "shutdown_timeout": "15s",
        "log": {"level": args.log_level},
        "domains": {"sms.local": {"type": "sms", "sender": "Bench"}},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


async def start_gateway(
    workdir: Path,
    platform_port: int,
    args: argparse.Namespace,
    spool_url: str | None = None,
    batch_size: int = 1,
) -> tuple[Child, int, Path]:
    """`python -m gateway serve` (not dry-run); its port read from its own log line."""
    config = write_config(workdir, platform_port, args, spool_url, batch_size)
    log_path = workdir / "gateway.log"
    # Its log is read back from a file, not from a pipe to this process: reading two lines per
    # message would cost the bench's event loop CPU on the same two cores.
    child = await Child.spawn_logged(
        "gateway", [sys.executable, "-m", "gateway", "serve", "-c", str(config)], log_path
    )
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
    return {
        **total,
        "processes": float(len(statuses)),
        **{f"VmHWM{n}": s.get("VmHWM", 0.0) for n, s in enumerate(statuses)},
    }


def log_problems(log_path: Path) -> list[str]:
    """WARNING/ERROR lines of a gateway log, minus the ones the bench causes on purpose."""
    lines = log_path.read_text(errors="replace").splitlines()
    return [
        line
        for line in lines
        if (" WARNING " in line or " ERROR " in line or "Traceback" in line)
        and not any(expected in line for expected in EXPECTED_WARNINGS)
    ]


# --- the fake platform, seen from here ------------------------------------------------------


class PlatformClient:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    async def _get(self, path: str) -> Any:
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(self.base + path) as response,
        ):
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


def expected_keys(load: LoadResult) -> set[str]:
    """What the platform must see once each: `<marker> <sent_to>` per accepted recipient."""
    return {
        f"{marker} {rcpt.split('@')[0]}"
        for marker, accepted in load.accepted.items()
        for rcpt in accepted.recipients
    }


# --- the load, measured ---------------------------------------------------------------------


def listen_overflows() -> int:
    """The kernel's TcpExt ListenOverflows counter (host-wide: others' traffic counts too)."""
    with open("/proc/net/netstat") as netstat:
        lines = [line.split() for line in netstat if line.startswith("TcpExt:")]
    names, values = lines[0], lines[1]
    return int(values[names.index("ListenOverflows")]) if "ListenOverflows" in names else 0


def merged(loads: Sequence[LoadResult]) -> LoadResult:
    """Loads run side by side (one per gateway) as one: from the first start to the last reply."""
    if len(loads) == 1:
        return loads[0]
    total = LoadResult(
        started=min(load.started for load in loads),
        first_mail=min(load.first_mail for load in loads),
        last_reply=max(load.last_reply for load in loads),
        finished=max(load.finished for load in loads),
        attempted=sum(load.attempted for load in loads),
    )
    for load in loads:
        total.accepted.update(load.accepted)
        total.latencies_ms.extend(load.latencies_ms)
        total.refused.update(load.refused)
    return total


async def measured_load(
    specs: LoadSpec | Sequence[LoadSpec],
    server_pids: int | Sequence[int],
    database_pid: int | None = None,
) -> tuple[LoadResult, int, CpuWindow]:
    """Run the loads side by side; the servers' CPU (and the database's) over the same window."""
    specs = [specs] if isinstance(specs, LoadSpec) else list(specs)
    pids = (server_pids,) if isinstance(server_pids, int) else tuple(server_pids)
    before = listen_overflows()
    cpu = CpuWindow(pids, database_pid)
    loads = await asyncio.gather(*(run_load(spec) for spec in specs))
    return merged(loads), listen_overflows() - before, cpu.close()
