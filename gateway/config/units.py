"""Durations, sizes and listen addresses as operators write them in the config."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB|K|M|G)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    None: 1,
}


def parse_duration(value: object) -> float:
    """Seconds from `30s`, `5m`, `2h`, `1d`, `250ms` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 5m, 2h, 1d)")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 5m, 2h, 1d)")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"{value!r} is negative")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from `512KiB`, `10MiB`, `1GiB` (binary), `10MB` (decimal) or a bare byte count."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size (use e.g. 512KiB, 10MiB)")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a size (use e.g. 512KiB, 10MiB)")
        unit = match.group(2).lower() if match.group(2) else None
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size < 0:
        raise ValueError(f"{value!r} is negative")
    return size


def parse_hostport(value: object, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` into (host, port); port 0 means "any free port"."""
    if isinstance(value, int) and not isinstance(value, bool):
        host, port_text = default_host, str(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or not rest.startswith(":"):
                raise ValueError(f"{value!r} is not host:port (IPv6 as [::1]:2525)")
            port_text = rest[1:]
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise ValueError(f"{value!r} is not host:port")
            if ":" in host:
                raise ValueError(f"{value!r}: write an IPv6 host in brackets, e.g. [::1]:2525")
        host = host or default_host
    else:
        raise ValueError(f"{value!r} is not host:port")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: port must be a number from 0 to 65535")
    return host, int(port_text)
