"""One server's figures for one scenario in one round, and how they are taken from the load
and from what the fake platform received."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpu import CpuWindow
from harness import expected_keys, log_problems
from loadgen import LoadResult

NAN = float("nan")


@dataclass
class Outcome:
    rate: float = NAN
    p50: float = NAN
    p99: float = NAN
    rss_mb: float = NAN
    e2e: float = NAN  # messages delivered per second, first MAIL -> last arrival
    drain_s: float = NAN  # last arrival at the platform - last 250 at the client
    during: float = NAN  # deliveries at the platform per second while the load ran
    after: float = NAN  # ... and after the last 250
    overflows: int = 0  # host-wide TCP listen-queue overflows during the load
    expected: int = 0
    delivered: int = 0
    duplicates: int = 0
    missing: int = 0
    extra: int = 0
    checked: bool = False  # whether deliveries were checked at all (not for Sink)
    accept_rate: float = NAN  # accepted messages / wall time of the load (c and e)
    requests: float = NAN  # requests the platform received, 503'd ones included
    batch_requests: float = NAN  # ... of them send-list-messages
    batch_messages: float = NAN  # messages in those
    unique: float = NAN  # distinct `<marker> <sent_to>` the platform took
    accepted: int = 0  # messages answered 250
    server_cpu: float = NAN  # CPU seconds of the server (and its children) in the load,
    # the PostgreSQL server's included when the spool is there
    database_cpu: float = NAN  # ... of them PostgreSQL's
    transactions: float = NAN  # transactions committed in the spool's PostgreSQL database
    load_cpu: float = NAN  # ... of the load generator (this process)
    steal: float = NAN  # the host's steal share meanwhile
    refused: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def cpu_fields(load: LoadResult, cpu: CpuWindow) -> dict[str, Any]:
    return {
        "accepted": len(load.accepted),
        "server_cpu": cpu.server,
        "load_cpu": cpu.load,
        "steal": cpu.steal,
        "database_cpu": cpu.database if cpu.database_pid is not None else NAN,
    }


def check_exactly_once(
    outcome: Outcome, load: LoadResult, deliveries: dict[str, list[float]]
) -> None:
    expected = expected_keys(load)
    outcome.checked = True
    outcome.expected = len(expected)
    outcome.delivered = sum(1 for key in expected if key in deliveries)
    outcome.missing = outcome.expected - outcome.delivered
    outcome.duplicates = sum(int(entry[0]) - 1 for entry in deliveries.values())
    # Sent but never acknowledged to the client (a session cut mid-DATA): legal, but counted.
    outcome.extra = sum(1 for key in deliveries if key not in expected)


def delivery_timing(outcome: Outcome, load: LoadResult, deliveries: dict[str, list[float]]) -> None:
    """End-to-end rate, and how delivery kept pace while SMTP was busy and after it."""
    if not deliveries or not load.accepted:
        return
    arrivals = [entry[1] for entry in deliveries.values()]  # first arrival per key
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
