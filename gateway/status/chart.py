"""The console's 24-hour chart, drawn on the server: an inline SVG of numbers only.

No script draws it (the page's CSP forbids any), so the server computes every point and label
and the template writes them out (autoescaped like the rest). The SVG scales to its box: its
text is sized in the viewBox's units so that it stays legible at a phone's width, where the
chart is about half its drawn size. A table of the same numbers follows it for screen readers
and for anyone who wants the exact values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.spool.console import Hourly

WIDTH = 600
HEIGHT = 230
LEFT, RIGHT, TOP, BOTTOM = 52, 30, 14, 36  # room for the labels
LABEL_EVERY = 4  # hours between the time labels under the chart


@dataclass(frozen=True, slots=True)
class Series:
    key: str  # accepted | sent | failed | suppressed | held: the CSS class that draws it
    label: str
    points: str  # the polyline's "x,y x,y ..."
    values: list[int]


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    left: int  # where the plot begins, after the scale's labels
    right: int  # room after it, for the last hour's label
    series: list[Series]
    grid: list[tuple[float, str]]  # (y, label) of each horizontal line
    hours: list[tuple[float, str]]  # (x, "HH:00") under the chart
    # The table: hour, accepted, sent, failed, suppressed, held.
    rows: list[tuple[str, int, int, int, int, int]]
    summary: str  # the SVG's title: what it shows in words


def _ceiling(peak: int) -> int:
    """A round top for the scale: 1, 2, 5 times a power of ten, at least the peak."""
    top = 1
    while True:
        for step in (1, 2, 5):
            if top * step >= peak:
                return top * step
        top *= 10


def chart(hourly: Hourly) -> Chart:
    named = [
        ("accepted", "accepted", hourly.accepted),
        ("sent", "sent", hourly.sent),
        ("failed", "failed or refused", hourly.failed),
        ("suppressed", "suppressed", hourly.suppressed),
        # Its own series (not within suppressed): a held one is still to be sent. Those
        # received in the hour and held now; once released they count as accepted and sent.
        ("held", "held now", hourly.held),
    ]
    hours = len(hourly.accepted)
    top = _ceiling(max([1, *(max(values, default=0) for _, _, values in named)]))
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(hour: int) -> float:
        # Each hour's point at the middle of its hour.
        return round(LEFT + inner_w * (hour + 0.5) / hours, 1)

    def y(value: int) -> float:
        return round(TOP + inner_h * (1 - value / top), 1)

    series = [
        Series(key, label, " ".join(f"{x(h)},{y(v)}" for h, v in enumerate(values)), values)
        for key, label, values in named
    ]
    grid = (
        [(y(value), str(value)) for value in (0, top // 2, top)]
        if top > 1
        else [
            (y(0), "0"),
            (y(1), "1"),
        ]
    )
    starts = [hourly.start + 3600 * h for h in range(hours)]
    labels = [
        (x(h), time.strftime("%H:00", time.localtime(starts[h])))
        for h in range(hours)
        if h % LABEL_EVERY == (hours - 1) % LABEL_EVERY  # the current hour is labelled
    ]
    rows = [
        (
            time.strftime("%H:00", time.localtime(start)),
            hourly.accepted[h],
            hourly.sent[h],
            hourly.failed[h],
            hourly.suppressed[h],
            hourly.held[h],
        )
        for h, start in enumerate(starts)
    ]
    totals = ", ".join(f"{sum(values)} {label}" for _, label, values in named)
    summary = f"Deliveries per hour, the last {hours} hours: {totals}"
    return Chart(WIDTH, HEIGHT, LEFT, RIGHT, series, grid, labels, rows, summary)
