"""The console's own template filters: an age as a person says it, with its exact time."""

from __future__ import annotations

import time

from markupsafe import Markup

from gateway.times import iso_time, local_time


def ago(timestamp: float | None, now: float | None = None) -> str:
    """How long ago, as a person says it: "40 s ago", "3 min ago", "2 h 5 min ago"; a time
    still to come (a held delivery's until) as "in 2 h 5 min"."""
    if timestamp is None:
        return "-"
    seconds = int((time.time() if now is None else now) - timestamp)
    if seconds < -1:  # a second's difference is the clock between two reads, not the future
        return f"in {_span(-seconds)}"
    return f"{_span(max(0, seconds))} ago"


def _span(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        hours, minutes = divmod(seconds // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days = seconds // 86400
    return f"{days} day{'s' if days > 1 else ''}"


def age_html(timestamp: float | None, now: float | None = None) -> Markup:
    """An age with its exact time and zone in a title (a filter, not a macro: it is on every
    line of a listing, where a macro call, or Markup.format, costs many times this)."""
    if timestamp is None:
        return Markup("-")
    # Markup + str escapes the str: cheap, and safe whatever the texts.
    return (
        _TIME_OPEN
        + (iso_time(timestamp) or "")
        + _TITLE
        + local_time(timestamp)
        + _CLOSE_TAG
        + ago(timestamp, now)
        + _TIME_CLOSE
    )


def state_html(state: str) -> Markup:
    return _STATE_OPEN + state + _CLOSE_TAG + state + _STATE_CLOSE


_TIME_OPEN, _TITLE, _TIME_CLOSE = Markup('<time datetime="'), Markup('" title="'), Markup("</time>")
_STATE_OPEN, _STATE_CLOSE = Markup('<span class="state state-'), Markup("</span>")
_CLOSE_TAG = Markup('">')
