"""aiosmtpd's handler hooks: recipients checked at RCPT, the message stored at the end of DATA.

The handler answers 250 to DATA only after the spool has committed the message. Its replies are
named (gateway.smtp.replies); the session's `push` renders and counts them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import Envelope, Session

from gateway.config.model import Config
from gateway.config.recipients import resolve_recipients
from gateway.errors import (
    BadRecipient,
    LimitReached,
    Refusal,
    RelayDenied,
    ShuttingDown,
    SpoolError,
)
from gateway.message.parse import off_loop
from gateway.message.prepare import Prepared, prepare
from gateway.message.routing import takes_address
from gateway.smtp import replies
from gateway.smtp.limit_check import rcpt_refusal
from gateway.smtp.replies import Reply, reply_for
from gateway.smtp.session import GatewayEnvelope, GatewaySession
from gateway.spool import Accepted, IncomingMessage
from gateway.spool.interface import SpoolInterface
from gateway.status.metrics import Metrics

log = logging.getLogger("smtp2pulse.smtp")


class Handler:
    def __init__(
        self, spool: SpoolInterface, on_stored: Callable[[], None], metrics: Metrics
    ) -> None:
        self.spool = spool
        self.on_stored = on_stored
        self.metrics = metrics
        # The arrival time quiet hours and Expires are measured from (tests set another).
        self.clock: Callable[[], float] = time.time

    async def handle_EHLO(
        self,
        server: GatewaySession,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd reads commands in order from one buffer and answers each in turn, which is
        # all RFC 2920 asks; advertising it saves relays such as Postfix a round trip per RCPT.
        return server.ehlo_keywords(
            [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]
        )

    async def handle_MAIL(
        self,
        server: GatewaySession,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> Reply:
        refusal = server.client.mail_refusal(address)  # bounces, rate limits
        if refusal is not None:
            return refusal
        envelope.mail_from = address  # "<>" for the null reverse-path (aiosmtpd needs it truthy)
        envelope.mail_options.extend(mail_options)
        return replies.SENDER_OK

    async def handle_RCPT(
        self,
        server: GatewaySession,
        session: Session,
        envelope: GatewayEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> Reply:
        config = server.config  # pinned per connection: a reload applies to new sessions
        limit = config.smtp.max_recipients
        if len(envelope.recipients) + len(envelope.route_only) >= limit:
            return replies.TOO_MANY_RECIPIENTS.format(limit=limit)
        try:
            resolved = resolve_recipients(address, config)  # an alias: each of its group
        except (RelayDenied, BadRecipient) as refusal:
            if config.routes and takes_address(config, address):
                # Only a route knows it (a device's burnt-in alerts@corp.local, or
                # alerts@sms.local, no phone number): whether one takes the message is known
                # after DATA.
                envelope.rcpt_tos.append(address)
                envelope.route_only.append(address)
                envelope.rcpt_options.extend(rcpt_options)
                return replies.RECIPIENT_OK
            reply = reply_for(refusal)
            server.client.log_refused_recipient(address, reply)
            return reply
        except Refusal as refusal:
            reply = reply_for(refusal)
            server.client.log_refused_recipient(address, reply)
            return reply
        if len(envelope.recipients) + len(envelope.route_only) + len(resolved) > limit:
            server.client.log_refused_recipient(
                address, f"a group of {len(resolved)}, over max_recipients"
            )
            return replies.TOO_MANY_RECIPIENTS.format(limit=limit)
        denied = server.client.recipient_refusal(resolved[0].domain)  # the user's own domains
        if denied is not None:
            server.client.log_refused_recipient(address, denied)
            return denied
        over = await rcpt_refusal(self.spool, config, resolved, self.clock())  # over_limit refuse
        if over is not None:
            server.client.log_refused_recipient(address, over)
            return over
        envelope.rcpt_tos.append(address)
        envelope.recipients.extend(resolved)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RECIPIENT_OK

    async def handle_DATA(
        self, server: GatewaySession, session: Session, envelope: GatewayEnvelope
    ) -> Reply:
        config = server.config
        raw: bytes = envelope.original_content or b""
        verdict = server.client.data_verdict(envelope.mail_from, raw)  # bounces, auto-replies
        if verdict is not None:
            return verdict
        recipients = tuple(envelope.recipients)
        route_only = tuple(envelope.route_only)
        arrived = self.clock()
        try:
            # Large mail is parsed off the loop: other sessions go on while it is.
            prepared = await off_loop(
                raw,
                lambda: prepare(
                    raw, recipients, envelope.mail_from or "", config, arrived, route_only
                ),
                pictures=config.sends_pictures,
            )
        except Refusal as refusal:
            reply = reply_for(refusal)
            log.info("refused message from <%s> %s: %s", envelope.mail_from, peer(session), reply)
            return reply
        refused = (
            server.client.sender_refusal(
                d.request.get("sender", "") for d in prepared.deliveries if d.suppressed is None
            )
            or server.client.take_rate()
        )
        if refused is not None:
            log.info("refused message from <%s> %s: %s", envelope.mail_from, peer(session), refused)
            return refused
        incoming = IncomingMessage(
            # The null reverse-path is stored as "", which is what bounce logic looks for.
            mail_from="" if envelope.mail_from in (None, "<>") else envelope.mail_from,
            peer=peer(session),
            helo=session.host_name or "",
            raw=raw,
            deliveries=prepared.deliveries,
            picture=prepared.picture,
            subject=prepared.subject,
        )
        if server.login_user is not None:
            incoming = dataclasses.replace(incoming, auth_user=server.login_user.name)
        started = time.monotonic()
        try:
            # A client hanging up mid-commit cancels only this wait, never the commit.
            queue_id = await self.spool.accept(incoming)
        except ShuttingDown:
            return replies.SHUTTING_DOWN
        except Refusal as refusal:  # a NUL byte (for good), or a limit's 452 (for now)
            if isinstance(refusal, LimitReached):
                self.on_stored()  # its commit may owe the day's notice: the worker sends it
            reply = reply_for(refusal)
            log.info("refused message from <%s> %s: %s", envelope.mail_from, peer(session), reply)
            return reply
        except SpoolError as exc:
            log.error(
                "could not store message from <%s> %s: %s", envelope.mail_from, peer(session), exc
            )
            return replies.TRY_LATER
        if not self._decided(queue_id, envelope.mail_from, session, config):
            return replies.QUEUED.format(queue_id=queue_id)  # a retransmission: the first's id
        self.on_stored()
        self.metrics.accepted.inc()
        self._count_routing(prepared, config)
        log.info(
            "queue_id=%s accepted from=<%s> peer=%s size=%d rcpt=%s%s%s%s (stored in %.1f ms)",
            queue_id,
            envelope.mail_from,
            peer(session),
            len(raw),
            ",".join(d.request.get("sent_to") or d.recipient for d in incoming.deliveries),
            "" if prepared.parts is None else f" parts={prepared.parts}",
            "" if prepared.route is None else f" route={prepared.route} ({prepared.route_action})",
            "".join(f" suppressed {to}: {why}" for to, why in queue_id.suppressed),
            (time.monotonic() - started) * 1000,
            extra={"queue_id": queue_id},
        )
        for note in prepared.notes:
            log.info("queue_id=%s %s", queue_id, note, extra={"queue_id": queue_id})
        return replies.QUEUED.format(queue_id=queue_id)

    def _count_routing(self, prepared: Prepared, config: Config) -> None:
        if prepared.route is not None:
            self.metrics.routed.labels(prepared.route).inc()
        for delivery in prepared.deliveries:
            if delivery.suppressed is not None:
                domain = delivery.recipient.rpartition("@")[2].lower()
                # A route's glob may take many unserved domains: one label for them all, lest
                # a sender mint a time series per address.
                label = domain if domain in config.domains else "unserved"
                self.metrics.suppressed.labels(label, delivery.suppressed.reason).inc()

    def _decided(
        self, accepted: Accepted, mail_from: str | None, session: Session, config: Config
    ) -> bool:
        """Logs the retransmissions not stored again and counts them and the repeats the commit
        suppressed (spool/repeats.py). False if nothing was stored."""
        for recipient, first in accepted.retransmitted:
            self.metrics.retransmissions.inc()
            log.info(
                "queue_id=%s retransmission from=<%s> peer=%s rcpt=%s: accepted before as %s,"
                " not stored again",
                first,
                mail_from,
                peer(session),
                recipient,
                first,
                extra={"queue_id": first},
            )
        for recipient, why in accepted.suppressed:  # (said in the "accepted" line)
            domain = recipient.rpartition("@")[2].lower()
            label = domain if domain in config.domains else "unserved"
            self.metrics.suppressed.labels(label, why.reason).inc()
        return accepted.stored

    async def handle_exception(self, error: Exception) -> Reply:
        # The one place an unexpected error becomes a reply: temporary, and without its text.
        log.error("unexpected error in SMTP session", exc_info=error)
        return replies.INTERNAL_ERROR


def peer(session: Session) -> str:
    address: Any = session.peer
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address or "?")
