"""CPU time spent by each side of a load, and the host's steal time meanwhile.

Throughput on a shared 2-core machine moves with whatever else the host runs; CPU seconds per
message move much less, so the bench prints both: the rate says how fast, the CPU says how much
each message cost the server (and the load generator, which shares the machine with it).
Linux only: it reads /proc.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """utime + stime of a live process and of its live children, seconds."""
    total = 0.0
    for one in (pid, *children(pid)):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)
    return total


def children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(name))
    return found


def _host() -> tuple[float, float]:
    """(all jiffies, steal jiffies) of the host's CPUs since boot."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return float(sum(values[:8])), float(values[7]) if len(values) > 7 else 0.0


@dataclass
class CpuWindow:
    """Open with the servers' pids before the load, close() after it."""

    server_pids: tuple[int, ...]
    database_pid: int | None = None  # PostgreSQL's postmaster, when the spool is there
    server: float = 0.0  # seconds of CPU the servers (with their children) used, database too
    database: float = 0.0  # ... of it the database server's processes
    load: float = 0.0  # ... and this process, which runs the load generator
    steal: float = 0.0  # the share of the host's CPU time stolen by its hypervisor

    def __post_init__(self) -> None:
        self._server0 = self._servers()
        self._database0 = self._database()
        times = os.times()
        self._load0 = times.user + times.system
        self._host0 = _host()

    def _servers(self) -> float:
        return sum(process_cpu(pid) for pid in self.server_pids)

    def _database(self) -> float:
        return process_cpu(self.database_pid) if self.database_pid is not None else 0.0

    def close(self) -> CpuWindow:
        self.database = self._database() - self._database0
        self.server = self._servers() - self._server0 + self.database
        times = os.times()
        self.load = times.user + times.system - self._load0
        host = _host()
        all_jiffies = host[0] - self._host0[0]
        self.steal = (host[1] - self._host0[1]) / all_jiffies if all_jiffies else 0.0
        return self
