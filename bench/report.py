"""The table and the notes under it: medians over rounds, ratios to Sink paired per round."""

from __future__ import annotations

import argparse
import math
import statistics
from collections import Counter
from collections.abc import Callable

from outcome import NAN, Outcome

Row = tuple[str, str]  # (scenario title, system)


def _median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]  # a round without data is left out
    return statistics.median(finite) if finite else NAN


def _num(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _once(outcomes: list[Outcome]) -> str:
    if not all(o.checked for o in outcomes):
        return "-"
    total = Counter[str]()
    for o in outcomes:
        total.update(
            expected=o.expected,
            delivered=o.delivered,
            dup=o.duplicates,
            miss=o.missing,
            extra=o.extra,
        )
    text = f"{total['delivered']}/{total['expected']} dup {total['dup']} miss {total['miss']}"
    return text + (f" extra {total['extra']}" if total["extra"] else "")


def table(results: dict[Row, list[Outcome]]) -> list[str]:
    head = (
        "scenario",
        "system",
        "msgs/s",
        "×sink",
        "CPU µs/msg",
        "p50 ms",
        "p99 ms",
        "peak RSS MB",
        "exactly once, all rounds (delivered/accepted)",
    )
    rows = [head]
    for (title, system), outcomes in results.items():
        rate = _median([o.rate for o in outcomes])
        sink = results.get((title, "sink"), [])
        paced = "idle" in title  # a paced run's rate is the pace, not the server's
        rows.append(
            (
                title,
                system,
                "-" if paced else _num(rate, 0),
                "-" if paced else _num(paired_ratio(outcomes, sink, "rate"), 2),
                "-"
                if paced
                else _num(_median([_per_message(o.server_cpu, o) for o in outcomes]), 0),
                _num(_median([o.p50 for o in outcomes])),
                _num(_median([o.p99 for o in outcomes])),
                _num(_median([o.rss_mb for o in outcomes])),
                _once(outcomes),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]

    def left(cell: str, width: int) -> str:
        return cell.ljust(width)

    def right(cell: str, width: int) -> str:
        return cell.rjust(width)

    align: list[Callable[[str, int], str]] = [left, left, *[right] * 6, left]
    return [
        "  ".join(align[i](cell, widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    ]


def paired_ratio(outcomes: list[Outcome], sink: list[Outcome], name: str) -> float:
    """The median over rounds of each round's gateway figure / that round's Sink rate.

    Each gateway run is paired with the Sink run just before it: the host's speed drifts by a
    third within minutes, and a pair shares most of the drift where medians taken apart do not.
    """
    return _median([getattr(o, name) / s.rate for o, s in zip(outcomes, sink, strict=False)])


def _rounds_note(outcomes: list[Outcome], sink: list[Outcome], name: str) -> str:
    return ", ".join(
        _num(getattr(o, name) / s.rate, 2) for o, s in zip(outcomes, sink, strict=False)
    )


def _per_message(seconds: float, outcome: Outcome) -> float:
    """µs of CPU per message answered 250 during the load."""
    return seconds / outcome.accepted * 1e6 if outcome.accepted else NAN


def _cpu_note(outcomes: list[Outcome], sink: list[Outcome]) -> str:
    server = _median([_per_message(o.server_cpu, o) for o in outcomes])
    sink_server = _median([_per_message(o.server_cpu, o) for o in sink])
    database = _median([_per_message(o.database_cpu, o) for o in outcomes])
    per_message = _median([o.transactions / o.accepted if o.accepted else NAN for o in outcomes])
    of_which = (
        ""
        if math.isnan(database)
        else (
            f" (PostgreSQL's {_num(database, 0)}; {_num(per_message, 2)} database transactions "
            "a message, delivery included)"
        )
    )
    return (
        f"CPU during the load: server {_num(server, 0)} µs/msg = "
        f"{_num(server / sink_server, 2)}× Sink's{of_which}, load generator "
        f"{_num(_median([_per_message(o.load_cpu, o) for o in outcomes]), 0)} µs/msg; "
        f"host steal {_num(100 * _median([o.steal for o in outcomes]))}%"
    )


def _delivery_note(outcomes: list[Outcome]) -> str:
    def med(name: str, digits: int = 0) -> str:
        return _num(_median([getattr(o, name) for o in outcomes]), digits)

    return (
        f"end to end {med('e2e')} msgs/s (first MAIL → last delivery); deliveries at the "
        f"platform {med('during')}/s while the load ran, {med('after')}/s after it; the "
        f"last came {med('drain_s', 2)}s after the last 250"
    )


def _batch_note(outcomes: list[Outcome], sink: list[Outcome]) -> str:
    """Accepting next to Sink, and requests per delivered message (c: one; e: batches)."""
    accept = _median([o.accept_rate for o in outcomes])
    per_message = _median([o.requests / o.unique if o.unique else NAN for o in outcomes])
    text = (
        f"accepting {_num(accept, 0)} msgs/s = "
        f"{_num(paired_ratio(outcomes, sink, 'accept_rate'), 2)}×sink (rounds: "
        f"{_rounds_note(outcomes, sink, 'accept_rate')}); "
        f"{_num(per_message, 4)} requests per delivered message "
        f"({_num(_median([o.requests for o in outcomes]), 0)} requests"
    )
    batches = _median([o.batch_requests for o in outcomes])
    if batches and not math.isnan(batches):
        size = _median(
            [o.batch_messages / o.batch_requests if o.batch_requests else NAN for o in outcomes]
        )
        text += f", {_num(batches, 0)} of them batches of {_num(size)} on average"
    return text + ")"


def notes(results: dict[Row, list[Outcome]], args: argparse.Namespace) -> list[str]:
    lines = []
    for (title, system), outcomes in results.items():
        where = f"{title} / {system}"
        if system != "sink" and "idle" not in title:
            lines.append(f"{where}: {_delivery_note(outcomes)}")
            sink = results.get((title, "sink"), [])
            lines.append(
                f"{where}: ×sink by round {_rounds_note(outcomes, sink, 'rate')}; "
                f"{_cpu_note(outcomes, sink)}"
            )
        if title.startswith("c ") and system == "smtp2pulse" and args.latency:
            ceiling = args.api_concurrency / args.latency
            lines.append(
                f"{where}: ceiling api.max_concurrency / latency = {ceiling:.0f} "
                f"requests/s = {ceiling / args.recipients:.0f} msgs/s"
            )
        if system != "sink" and title[:2] in ("c ", "e "):
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
