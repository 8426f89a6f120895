"""The `api:` section: where the platform is, with which token, and how hard to press it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config import validation as v
from gateway.config.credentials import TOKEN_KEYS, read_token
from gateway.config.model import ApiConfig, Secret
from gateway.config.units import parse_duration

SENDERS = ("inline", "process")
MAX_BATCH = 1000  # the platform documents no limit; a request stays a few MB at most
MAX_BATCH_WAIT = 5.0


def read_api(
    data: dict[str, Any], problems: v.Problems, dry_run: bool, env: Mapping[str, str], secrets: bool
) -> ApiConfig:
    path = "api"
    v.keys(
        data,
        path,
        {
            "base_url",
            "timeout",
            "dry_run",
            "max_concurrency",
            "max_rate",
            "sender",
            "batch_size",
            "batch_wait",
            *TOKEN_KEYS,
        },
        problems,
    )
    defaults = ApiConfig()
    dry = v.value(data, "dry_run", path, v.boolean, False, problems) or dry_run
    token = read_token(data, path, env, problems.add, secrets=secrets)
    if not token and not dry and not any(data.get(key) for key in TOKEN_KEYS):
        problems.add("api.token", "is required (or run with --dry-run / api.dry_run: true)")
    return ApiConfig(
        base_url=v.value(data, "base_url", path, _base_url, defaults.base_url, problems),
        token=Secret(token),
        timeout=v.value(data, "timeout", path, v.positive_duration, defaults.timeout, problems),
        dry_run=dry,
        max_concurrency=v.value(
            data, "max_concurrency", path, v.integer(1, 1000), defaults.max_concurrency, problems
        ),
        max_rate=v.value(data, "max_rate", path, _rate, 0.0, problems),
        sender=v.choice(data, "sender", path, SENDERS, defaults.sender, problems),
        batch_size=v.value(
            data, "batch_size", path, v.integer(1, MAX_BATCH), defaults.batch_size, problems
        ),
        batch_wait=v.value(data, "batch_wait", path, _batch_wait, defaults.batch_wait, problems),
    )


def _base_url(value: Any) -> str:
    url = v.url(value)
    method = url.rstrip("/").rpartition("/")[2]
    if method in ("send-message", "send-list-messages"):
        # Taken as it is, every send would go to .../send-message/send-message: a 404 each.
        raise ValueError(
            f"{url!r} ends in the method /{method}, which the gateway appends; "
            f"give the API's base, e.g. {url.rstrip('/').rpartition('/')[0]!r}"
        )
    return url


def _batch_wait(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds > MAX_BATCH_WAIT:
        raise ValueError(
            f"{value!r} is longer than {MAX_BATCH_WAIT:g}s: a batch waits to fill"
            " while others are in flight, not for minutes"
        )
    return seconds


def _rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} is not a number of requests per second")
    try:
        rate = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number of requests per second") from None
    if rate < 0:
        raise ValueError(f"{value!r} is negative (0 means no cap)")
    return rate
