"""The settings a running daemon cannot change in place, for a reload (gateway.app).

A reload warns about each one that changed and keeps its running value, both from RESTART_ONLY,
so the list is the one place that says which they are. An http section added or removed waits
for a restart too.
"""

from __future__ import annotations

import dataclasses

from gateway.config.model import Config

RESTART_ONLY = (
    "smtp.listen",
    "spool.path",
    "spool.url",
    "api.base_url",
    "api.timeout",
    "api.dry_run",
    "api.max_concurrency",
    "api.sender",
    "http.listen",
)


def changed_keys(new: Config, old: Config) -> list[str]:
    """The RESTART_ONLY keys whose value differs between the two, in the list's order."""
    return [key for key in RESTART_ONLY if _dig(new, key) != _dig(old, key)]


def keep_running(new: Config, old: Config) -> Config:
    """`new` with the running (`old`) value of every RESTART_ONLY key."""
    kept: dict[str, dict[str, object]] = {}
    for dotted in RESTART_ONLY:
        section, key = dotted.split(".")
        kept.setdefault(section, {})[key] = _dig(old, dotted)
    sections: dict[str, object] = {}
    for section, keys in kept.items():
        new_part, old_part = getattr(new, section), getattr(old, section)
        # The status server keeps its socket: an http section added or removed waits too.
        sections[section] = (
            dataclasses.replace(new_part, **keys)
            if new_part is not None and old_part is not None
            else old_part
        )
    return dataclasses.replace(new, **sections)  # type: ignore[arg-type]


def _dig(config: Config, dotted: str) -> object:
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key, None)
