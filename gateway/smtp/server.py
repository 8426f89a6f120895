"""The SMTP front: aiosmtpd's protocol in our own event loop, our handler behind it.

aiosmtpd does the protocol; the handler decides what to take (recipients at RCPT time, the
message at the end of DATA) and answers 250 only after the spool has committed the message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, AnyStr

from aiosmtpd.smtp import Envelope, Session

from gateway.config.loader import Config, Listener
from gateway.errors import Refusal, ShuttingDown, SpoolError
from gateway.message.mapping import (
    build_request,
    dropped_note,
    ignored_overrides,
    listing,
    resolve_recipient,
)
from gateway.message.parse import off_loop, parse_message
from gateway.smtp.data_phase import StretchedData
from gateway.smtp.guard import Guard, GuardedSMTP
from gateway.smtp.replies import REPLY_SESSION_TOO_LONG, with_enhanced_code
from gateway.smtp.smtps import TlsListener
from gateway.spool.store import IncomingMessage, NewDelivery, SharedTexts, Spool
from gateway.status.metrics import Metrics

log = logging.getLogger("smtp2pulse.smtp")

_SIMPLE_ADDRESS = re.compile(
    r"\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>"
    r"((?:\s.*)?)", re.DOTALL)
REPLY_SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
REPLY_TRY_LATER = "451 4.3.0 Temporary failure storing the message, try again later"


class Sessions:
    """The open SMTP connections, so that a stop can drain them."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.open: set[GatewaySMTP] = set()
        self.closing = False
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, session: GatewaySMTP) -> None:
        self.open.add(session)
        self._empty.clear()
        self.metrics.sessions.inc()
        self.metrics.sessions_open.set(len(self.open))

    def discard(self, session: GatewaySMTP) -> None:
        self.open.discard(session)
        self.metrics.sessions_open.set(len(self.open))
        if not self.open:
            self._empty.set()

    async def drain(self, grace: float) -> None:
        """Say 421 to idle sessions at once, to busy ones when their command ends."""
        self.closing = True
        for session in list(self.open):
            if not session.busy:
                session.say_goodbye()
        try:
            await asyncio.wait_for(self._empty.wait(), grace)
        except TimeoutError:
            log.warning("%d SMTP sessions still busy after %.0fs; closing them",
                        len(self.open), grace)
            for session in list(self.open):
                session.abort()


class GatewaySMTP(StretchedData, GuardedSMTP):
    """aiosmtpd's SMTP with precise replies, a drain hook and a bounded lifetime
    (who may connect and send, and how, is GuardedSMTP's part)."""

    def __init__(self, handler: Handler, sessions: Sessions, config: Config,
                 **kwargs: Any) -> None:
        # A real HTML mail has lines far above RFC 5321's 1000 octets; any line that fits in
        # the size limit is taken (aiosmtpd reads it into a StreamReader of this limit, and
        # gateway.data_phase needs that limit at or above the size limit).
        self.line_length_limit = max(1001, config.smtp.max_message_size)
        super().__init__(handler, config=config, **kwargs)
        self.sessions = sessions
        self.config = config
        self.busy = False
        self._smtp_methods = {name: self._tracked(name, method)
                              for name, method in self._smtp_methods.items()}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self.sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.sessions.discard(self)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self.sessions.closing:
            self.say_goodbye()
            return
        await super()._handle_client()

    def _tracked(self, name: str, method: Callable[[str | None], Awaitable[None]]
                 ) -> Callable[[str | None], Awaitable[None]]:
        async def call(arg: str | None) -> None:
            if self.loop.time() > self.deadline and name != "QUIT":
                # A NOOP every few minutes would otherwise keep a session (and the config and
                # login it started with) for ever.
                log.info("closing session of %s: smtp.max_session_duration reached",
                         _peer(self.session) if self.session else "?")
                await self.push(REPLY_SESSION_TOO_LONG)
                self._close()
                return
            self.busy = True
            try:
                await method(arg)
            finally:
                self.busy = False
            if self.sessions.closing and name != "QUIT":
                self.say_goodbye()
        return call

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and not (self._in_greeting_reply
                                            and status.startswith("250")):
            reply = with_enhanced_code(status)
            self.sessions.metrics.refusal(reply)
            await super().push(reply)
        else:
            await super().push(status)

    _in_greeting_reply = False

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_greeting_reply = True   # EHLO's keyword lines carry no status codes
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_greeting_reply = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._in_greeting_reply = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._in_greeting_reply = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # The common case needs no RFC 5322 parser (about 5% of a busy gateway's CPU: aiosmtpd's
        # builds a class on every call); anything unusual still goes through it.
        simple = _SIMPLE_ADDRESS.fullmatch(arg)
        if simple:
            return simple.group(1), simple.group(2).lstrip()
        # The address parser drops (comments) silently, so "<7(900)1234567@sms.local>" would
        # become other digits than the sender wrote. Refuse instead of guessing.
        address_part = arg.split(">", 1)[0] if arg.lstrip().startswith("<") else arg
        if "(" in address_part or ")" in address_part:
            return None, None
        result: tuple[str | None, str | None] = super()._getaddr(arg)
        return result

    def say_goodbye(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._writer.write(REPLY_SHUTTING_DOWN.encode() + b"\r\n")
            self.transport.close()

    def abort(self) -> None:
        # Not isinstance(asyncio.WriteTransport): uvloop's transports do not derive from it.
        abort = getattr(self.transport, "abort", None)
        if abort is not None:
            abort()


class Handler:
    """aiosmtpd handler hooks: recipient checks at RCPT, the durable store at end of DATA."""

    def __init__(self, spool: Spool, on_stored: Callable[[], None], metrics: Metrics) -> None:
        self.spool = spool
        self.on_stored = on_stored
        self.metrics = metrics

    async def handle_EHLO(self, server: GatewaySMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        # aiosmtpd reads commands in order from one buffer and answers each in turn, which is
        # all RFC 2920 asks; advertising it saves relays such as Postfix a round trip per RCPT.
        return server.ehlo_keywords(
            [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]])

    async def handle_MAIL(self, server: GatewaySMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        refusal = server.mail_refusal(address)    # bounces, rate limits
        if refusal is not None:
            return refusal
        envelope.mail_from = address   # "<>" for the null reverse-path (aiosmtpd needs it truthy)
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender ok"

    async def handle_RCPT(self, server: GatewaySMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        config = server.config   # pinned per connection: a reload applies to new sessions
        if len(envelope.rcpt_tos) >= config.smtp.max_recipients:
            return f"452 4.5.3 Too many recipients (at most {config.smtp.max_recipients})"
        try:
            recipient = resolve_recipient(address, config)
        except Refusal as refusal:
            log.info("refused recipient <%s> from %s: %s", address, _peer(session),
                     refusal.reply)
            return refusal.reply
        denied = server.recipient_refusal(recipient.domain)   # the user's own domains
        if denied is not None:
            log.info("refused recipient <%s> from %s: %s", address, _peer(session), denied)
            return denied
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient ok"

    async def handle_DATA(self, server: GatewaySMTP, session: Session,
                          envelope: Envelope) -> str:
        config = server.config
        raw: bytes = envelope.original_content or b""
        verdict = server.data_verdict(envelope, raw)     # bounces and auto-replies
        if verdict is not None:
            return verdict
        notes: list[str] = []
        try:
            # Large mail is parsed off the loop: other sessions go on while it is.
            incoming = await off_loop(raw, lambda: self._prepare(config, session, envelope,
                                                                 raw, notes))
        except Refusal as refusal:
            log.info("refused message from <%s> %s: %s", envelope.mail_from, _peer(session),
                     refusal.reply)
            return refusal.reply
        refused = (server.sender_refusal(d.request.get("sender", "") for d in incoming.deliveries)
                   or server.take_rate())
        if refused is not None:
            log.info("refused message from <%s> %s: %s", envelope.mail_from, _peer(session),
                     refused)
            return refused
        if server.login_user is not None:
            incoming = dataclasses.replace(incoming, auth_user=server.login_user.name)
        started = time.monotonic()
        try:
            # A client hanging up mid-commit cancels only this wait, never the commit.
            queue_id = await self.spool.accept(incoming)
        except ShuttingDown:
            return REPLY_SHUTTING_DOWN
        except SpoolError as exc:
            log.error("could not store message from <%s> %s: %s", envelope.mail_from,
                      _peer(session), exc)
            return REPLY_TRY_LATER
        self.on_stored()
        self.metrics.accepted.inc()
        log.info("queue_id=%s accepted from=<%s> peer=%s size=%d rcpt=%s (stored in %.1f ms)",
                 queue_id, envelope.mail_from, _peer(session), len(raw),
                 ",".join(d.request["sent_to"] for d in incoming.deliveries),
                 (time.monotonic() - started) * 1000, extra={"queue_id": queue_id})
        for note in notes:
            log.info("queue_id=%s %s", queue_id, note, extra={"queue_id": queue_id})
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def _prepare(self, config: Config, session: Session, envelope: Envelope,
                 raw: bytes, notes: list[str]) -> IncomingMessage:
        """The message as it will be stored; `notes` collects what the log should say once
        the message has a queue id."""
        parsed = parse_message(raw, config.smtp.fallback_charset)
        dropped = dropped_note(parsed)
        if dropped is not None:
            notes.append(dropped)
        deliveries: list[NewDelivery] = []
        seen: set[tuple[str, str]] = set()
        texts = SharedTexts(config.smtp.max_message_size)
        for address in envelope.rcpt_tos:
            recipient = resolve_recipient(address, config)
            domain = config.domains[recipient.domain]
            ignored = ignored_overrides(parsed, domain)
            if ignored:
                notes.append(f"{listing(ignored)} not allowed for {domain.name}, ignored")
            if (domain.name, recipient.sent_to) in seen:
                continue   # the same person twice in one envelope gets one message
            seen.add((domain.name, recipient.sent_to))
            request = build_request(parsed, recipient, domain, envelope.mail_from or "")
            deliveries.append(NewDelivery(address, texts.share(request)))
        # The null reverse-path is stored as "", which is what bounce logic looks for.
        mail_from = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
        return IncomingMessage(mail_from=mail_from, peer=_peer(session),
                               helo=session.host_name or "", raw=raw,
                               deliveries=tuple(deliveries))

    async def handle_exception(self, error: Exception) -> str:
        # The one place an unexpected error becomes a reply: temporary, and without its text.
        log.error("unexpected error in SMTP session", exc_info=error)
        return "451 4.3.0 Internal error, try again later"


def _peer(session: Session) -> str:
    peer: Any = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "?")


class SmtpFront:
    """Binds the listeners and drains them on stop."""

    def __init__(self, config: Callable[[], Config], spool: Spool,
                 on_stored: Callable[[], None], *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.handler = Handler(spool, on_stored, self.metrics)
        self.sessions = Sessions(self.metrics)
        self.guard = Guard(self.metrics.registry)
        self._servers: list[asyncio.Server] = []
        self._tls_listeners: list[TlsListener] = []

    def _protocol(self, listener: Listener, admitted: str | None = None) -> GatewaySMTP:
        config = self.config()
        return GatewaySMTP(
            self.handler, self.sessions, config, guard=self.guard, listener=listener,
            current_config=self.config, admitted=admitted,
            data_size_limit=config.smtp.max_message_size,
            enable_SMTPUTF8=True,
            hostname=config.smtp.hostname,    # never the default: it does a DNS lookup
            ident="ESMTP smtp2pulse",
            timeout=config.smtp.timeout,
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        smtp = self.config().smtp
        for listener in (*smtp.listen, *(smtp.tls.implicit_listen if smtp.tls else ())):
            try:
                if listener.implicit_tls:
                    tls_listener = TlsListener(listener, self.guard, self.config,
                                               functools.partial(self._protocol, listener),
                                               lambda: self.sessions.closing)
                    self._tls_listeners.append(tls_listener)
                    await tls_listener.start()
                    sockets: list[Any] = tls_listener.sockets
                else:
                    server = await loop.create_server(
                        functools.partial(self._protocol, listener), listener.host,
                        listener.port, reuse_address=True)
                    self._servers.append(server)
                    sockets = list(server.sockets)
            except OSError as exc:
                await self.close_listeners()
                raise OSError(exc.errno, f"cannot listen on {listener}: {exc.strerror}") from exc
            log.info("SMTP listening on %s", ", ".join(_describe(s) for s in sockets))

    def listening(self) -> bool:
        return bool(self._servers or self._tls_listeners) and not self.sessions.closing

    @property
    def addresses(self) -> list[tuple[str, int]]:
        # Implicit-TLS listeners come last in the config, and last here.
        return [*(sock.getsockname()[:2] for s in self._servers for sock in s.sockets),
                *(sock.getsockname()[:2] for t in self._tls_listeners for sock in t.sockets)]

    async def close_listeners(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        for tls_listener in self._tls_listeners:
            tls_listener.close()
        self._tls_listeners.clear()

    async def stop(self, grace: float) -> None:
        await self.close_listeners()
        await self.sessions.drain(grace)


def _describe(sock: Any) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
