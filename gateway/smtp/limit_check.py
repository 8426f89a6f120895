"""RCPT's look at a domain's limits (config `limits` with `over_limit: refuse`): a recipient the
count already says no more to is refused there with 452 4.2.2, before the client sends its
data. A read, no lock: the accept's commit decides for good (gateway.spool.budget), and refuses
after DATA what no RCPT could know (the parts of a text, a burst of messages in flight).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gateway.config.model import Config, Recipient
from gateway.delivery.held import send_notice
from gateway.errors import SpoolError
from gateway.message.limits import probe
from gateway.smtp import replies
from gateway.smtp.replies import Reply
from gateway.spool import Spend
from gateway.spool.interface import SpoolInterface

log = logging.getLogger("smtp2pulse.smtp")


async def rcpt_refusal(
    spool: SpoolInterface, config: Config, resolved: Sequence[Recipient], now: float
) -> Reply | None:
    for recipient in resolved:
        domain = config.domains.get(recipient.domain)
        if domain is None or domain.limits is None or domain.limits.over_limit != "refuse":
            continue
        spend = probe(domain, recipient.sent_to, now)
        if spend is None:
            continue
        try:
            over = await spool.over_limit(spend)
        except SpoolError as exc:  # the commit after DATA will say; a read is not worth a 451
            log.warning("limits of %s not read at RCPT: %s", domain.name, exc)
            return None
        if over is not None:
            await _count(spool, config, spend)
            return replies.LIMIT_REACHED.format(detail=f"{domain.name}: {over}, try again later")
    return None


async def _count(spool: SpoolInterface, config: Config, spend: Spend) -> None:
    """A refusal at RCPT is held back as one after DATA is: counted in the day's `held_back`,
    and the day's first trip owes its notice (else a sender refused only at RCPT, one message
    at a time, would never make the notice go: the commit would never see it)."""
    try:
        trip = await spool.count_refusal(spend)
        if trip is not None:
            await send_notice(spool, trip, config)
    except SpoolError as exc:  # the refusal stands; only its count is missing
        log.warning("refusal at RCPT for %s not counted: %s", spend.limits.domain, exc)
