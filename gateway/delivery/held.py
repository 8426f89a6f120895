"""The delivery side of the domains' limits: held deliveries released when their window has
room, and the day's notice to a domain's `limits.notify` when a limit first trips.

The worker's loop asks `tick` before it leases. A look at the spool (when the next held
delivery is due, which notices are owed) is a read, taken at most once a LOOK_EVERY and only
after something may have changed it (a wake-up: a message stored); releasing is a write, taken
only when a held delivery is due. Any gateway of a shared spool may release any held delivery
and send any notice: the spool makes each happen once (gateway.spool.budget).
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTPUTF8

from gateway.config.model import Config
from gateway.config.recipients import resolve_recipients
from gateway.errors import GatewayError
from gateway.message.limits import today
from gateway.message.prepare import prepare
from gateway.spool import IncomingMessage, Trip
from gateway.spool.interface import SpoolInterface

log = logging.getLogger("smtp2pulse.worker")

LOOK_EVERY = 1.0
# With a `notify` set, a look at least this often: a limit's refusal after DATA stores nothing,
# so no wake-up tells of its trip (PostgreSQL's NOTIFY does; the SQLite spool has none).
NOTICE_LOOK_EVERY = 10.0
_WHAT_HAPPENS = {
    "hold": "held in the spool until the limit's window has room, then sent",
    "drop": "accepted and suppressed (never sent)",
    "refuse": "refused with 452 4.2.2 (the sender may try again later)",
}


class HeldWatch:
    def __init__(
        self, spool: SpoolInterface, config: Callable[[], Config], clock: Callable[[], float]
    ) -> None:
        self.spool = spool
        self.config = config
        self.clock = clock
        self._next_held: float | None = 0.0  # unknown at start: look
        self._looked = float("-inf")
        self._stale = True  # something may have been held or tripped since the last look
        self._limits_seen: object = None  # the limits the held ones were last looked at under

    def changed(self) -> None:
        """A message was stored: it may have been held, or tripped a limit."""
        self._stale = True

    def _watching(self) -> bool:
        """Whether there is anything to look for: a domain with limits, held deliveries left
        from a config that had them, or limits other than at the last look (a reload may have
        lifted the limits that held some). A gateway without limits never looks."""
        config = self.config()
        limited = any(domain.limits is not None for domain in config.domains.values())
        changed = _limits(config) != self._limits_seen
        return limited or changed or self._next_held is not None

    def _notifying(self) -> bool:
        domains = self.config().domains.values()
        return any(d.limits is not None and d.limits.notify is not None for d in domains)

    def due(self) -> float | None:
        """When `tick` has something to do next; None: nothing until a message is stored."""
        times = [t for t in (self._next_held,) if t is not None]
        if self._stale and self._watching():
            times.append(self._looked + LOOK_EVERY)
        if self._notifying():
            times.append(self._looked + NOTICE_LOOK_EVERY)
        return min(times) if times else None

    async def tick(self) -> None:
        config = self.config()
        now = self.clock()
        limited = any(domain.limits is not None for domain in config.domains.values())
        limits = _limits(config)
        if limits != self._limits_seen:
            self._stale = True  # a reload (or the start): what is held under other limits?
        if now - self._looked >= NOTICE_LOOK_EVERY and self._notifying():
            self._stale = True  # a trip no stored message told of
        if self._stale and self._watching() and now - self._looked >= LOOK_EVERY:
            self._looked, self._stale = now, False
            self._next_held = await self.spool.next_held()
            if self._next_held is not None and limits != self._limits_seen:
                # Held under other limits (or none now, or for a domain gone): each is looked
                # at again now, not when the old limit's window would have had room.
                await self.spool.recheck_held()
                self._next_held = now
            self._limits_seen = limits
            if limited:
                for trip in await self.spool.notices_owed():
                    await send_notice(self.spool, trip, config)
        if self._next_held is not None and self._next_held <= now:
            released, self._next_held = await self.spool.release_held(
                today(config, now), config.spool.give_up_after
            )
            if released:
                log.info("released %d held deliveries: their limits have room now", released)


def _limits(config: Config) -> object:
    """What decides how long a delivery is held: each domain's limits and time zone."""
    return {name: (d.limits, d.timezone) for name, d in config.domains.items()}


async def send_notice(spool: SpoolInterface, trip: Trip, config: Config) -> None:
    """The day's notice of a tripped limit to the domain's `limits.notify`, stored unless a
    gateway did so already (the spool's claim makes it once)."""
    domain = config.domains.get(trip.domain)
    if domain is None or domain.limits is None or domain.limits.notify is None:
        return
    try:
        message = notice(trip, config, domain.limits.notify, domain.limits.over_limit)
    except GatewayError as exc:  # the address no longer resolves, a text it cannot send
        log.warning("no notice of %s's limit to send: %s", trip.domain, exc)
        return
    queue_id = await spool.store_notice(trip, message)
    if queue_id is not None:
        log.warning(
            "queue_id=%s limit %s of %s tripped on %s; notice to %s",
            queue_id,
            trip.tripped,
            trip.domain,
            trip.day,
            domain.limits.notify,
            extra={"queue_id": queue_id},
        )


def notice(trip: Trip, config: Config, address: str, over_limit: str) -> IncomingMessage:
    """The notice as a mail from the gateway to `address`, made into deliveries as any mail is,
    but exempt from every limit and route, and with the null sender (nothing bounces to it)."""
    mail = EmailMessage(policy=SMTPUTF8)
    mail["From"] = f"smtp2pulse <postmaster@{config.smtp.hostname}>"
    mail["To"] = address
    mail["Subject"] = f"smtp2pulse: {trip.domain} limit reached ({trip.tripped})"
    mail["Date"] = email.utils.formatdate(localtime=True)
    mail["Auto-Submitted"] = "auto-generated"
    # Where to look: what the limit kept in the spool (a refused one is not there; the log
    # has each refusal), the status page, the day's budget.
    kept = {"hold": "held", "drop": "suppressed"}.get(over_limit)
    where = [f"smtp2pulse queue list --state {kept}"] if kept else []
    if config.http is not None and config.http.public_url:
        where.append(f"the status page {config.http.public_url.rstrip('/')}/")
    where.append("/metrics smtp2pulse_domain_budget_used")
    mail.set_content(
        f"{trip.domain}: limit {trip.tripped} reached on {trip.day}. "
        f"{trip.held_back} message(s) over it so far, {_WHAT_HAPPENS[over_limit]}. "
        f"See: {', '.join(where)}.\n"
    )
    raw = mail.as_bytes()
    recipients = resolve_recipients(address, config)
    prepared = prepare(raw, recipients, "", dataclasses.replace(config, routes=()), budgeted=False)
    return IncomingMessage(
        mail_from="",
        peer="smtp2pulse",
        helo=config.smtp.hostname,
        raw=raw,
        deliveries=prepared.deliveries,
    )
