"""Small checks the config loader is built from: each says what is wrong, the loader adds where.

Every check returns the converted value or raises ValueError with a sentence an operator can act
on; `Problems` collects them so that every mistake in a file is reported at once.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gateway.config.charsets import mail_codec
from gateway.config.units import parse_duration, parse_size

T = TypeVar("T")


class Problems:
    """Collects every problem, each naming the key path it is about."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.lines.append(f"{path}: {message}")


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def keys(data: dict[str, Any], path: str, known: set[str], problems: Problems) -> dict[str, Any]:
    for key in data:
        if key not in known:
            hint = f" (known: {', '.join(sorted(known))})"
            problems.add(join(path, str(key)), f"unknown key{hint}")
    return data


def section(parent: dict[str, Any], key: str, problems: Problems, path: str = "") -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(join(path, key), f"must be a mapping, not {type(value).__name__}")
        return {}
    return value


def value(
    data: dict[str, Any],
    key: str,
    path: str,
    convert: Callable[[Any], T],
    default: T,
    problems: Problems,
) -> T:
    if key not in data or data[key] is None:
        return default
    try:
        return convert(data[key])
    except (ValueError, TypeError) as exc:
        problems.add(join(path, key), str(exc))
        return default


def choice(
    data: dict[str, Any],
    key: str,
    path: str,
    choices: Iterable[str],
    default: str,
    problems: Problems,
) -> str:
    choices = tuple(choices)

    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return str(value)

    return value(data, key, path, check, default, problems)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
            return True  # "${FLAG}" substitutions arrive as strings
        if isinstance(value, str) and value.lower() in ("false", "no", "off", "0", ""):
            return False
        raise ValueError(f"{value!r} is not true or false")
    return value


def integer(low: int, high: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"{value!r} is not a whole number")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a whole number") from None
        if number < low or (high is not None and number > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{number} is out of range ({bound})")
        return number

    return check


def text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{value!r} is not text")
    return str(value)


def networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    if not isinstance(value, list):
        raise ValueError('must be a list of networks, e.g. [127.0.0.0/8, "::1/128"]')
    networks = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IPv4 or IPv6 network") from None
    return tuple(networks)


def charset_name(value: Any) -> str:
    name = text(value)
    if mail_codec(name) is None:
        # The parser decodes in no other charset (see gateway.config.charsets), so a fallback
        # outside the list would be ignored silently at every message.
        raise ValueError(
            f"{name!r} is not a charset mail is written in (e.g. cp1251, koi8-r, iso-8859-5, utf-8)"
        )
    return name


def hostname(value: Any) -> str:
    name = text(value)
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", name):
        raise ValueError(f"{name!r} is not a host name")
    return name


def positive_size(value: Any) -> int:
    size = parse_size(value)
    if size < 1024:
        raise ValueError(f"{value!r} is too small (at least 1KiB)")
    return size


def positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{value!r} must be more than zero")
    return seconds


def url(value: Any) -> str:
    url = text(value)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    return url
