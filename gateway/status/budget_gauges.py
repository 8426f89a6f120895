"""`/metrics`' view of the domains' limits: each domain's messages and SMS parts so far on its
calendar day beside its limits, read from the spool at scrape time (gateway.spool.budget)."""

from __future__ import annotations

import time

from gateway.config.model import Config
from gateway.errors import SpoolError
from gateway.message.limits import today
from gateway.spool.interface import SpoolInterface
from gateway.status.metrics import Metrics


async def budget_gauges(metrics: Metrics, spool: SpoolInterface, config: Config) -> None:
    # Drawn afresh each scrape: a limit or a domain a reload removed leaves no stale series
    # (and the labels stay the configured domains, two units each).
    metrics.budget_used.clear()
    metrics.budget_limit.clear()
    days = today(config, time.time())
    if not days:
        return
    try:
        used = await spool.budget_used(days)
    except SpoolError:
        return  # the spool's own gauges say it is away
    for domain, limits in days.items():
        messages, parts = used.get(domain, (0, 0))
        metrics.budget_used.labels(domain, "messages").set(messages)
        if limits.messages_per_day is not None:
            metrics.budget_limit.labels(domain, "messages").set(limits.messages_per_day)
        if limits.parts_per_day is not None or parts:
            metrics.budget_used.labels(domain, "parts").set(parts)
        if limits.parts_per_day is not None:
            metrics.budget_limit.labels(domain, "parts").set(limits.parts_per_day)
