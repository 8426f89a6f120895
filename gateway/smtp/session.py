"""One SMTP session: aiosmtpd's protocol with the gateway's admission, AUTH, DATA reader,
named replies, drain hook and bounded lifetime.

aiosmtpd does the protocol; this one subclass changes what it must, each method overridden once
(the AUTH exchange in its base gateway.smtp.auth_exchange, with the names that one relies on).
It relies on these names of aiosmtpd's that are not its documented API (checked against the
versions pyproject.toml allows):

- `_handle_client`: the command loop; entered here first to refuse a connection (network, caps,
  drain) with a reply before aiosmtpd's greeting.
- `_smtp_methods`: the table of command methods, wrapped once so that every command marks the
  session busy (a drain waits for it) and the session's age is checked before it runs.
- `_getaddr`: the MAIL/RCPT address parser; a fast path for plain addresses, and refusals of
  what it would silently change (comments) or could not store (control bytes).
- `_timeout_cb`, `_timeout_handle`, `_reset_timeout`: the idle timeout, armed by aiosmtpd at each
  command (and never again until the next); a 421 is written before aiosmtpd closes, and the
  timer is stopped while the gateway holds the turn (from the final dot to its reply).
- `_reader`, `_writer`: the connection's streams, for the DATA reader and the replies written
  outside `push` (timeout, shutdown).
- `_set_post_data_state`, `_call_handler_hook`, `_decode_data`: smtp_DATA below is aiosmtpd's
  smtp_DATA of 1.4.6 with the data read by gateway.smtp.data_reader; these are what its copy
  calls and checks.
- `_create_envelope`: so that each envelope carries the recipients as resolved at RCPT.
- `check_helo_needed`: a public but undocumented hook, called as aiosmtpd itself does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from aiosmtpd.smtp import MISSING, Envelope, TLSSetupException

from gateway.config.access import policy_for
from gateway.config.model import Config, Listener, User
from gateway.config.recipients import Recipient
from gateway.smtp import addresses, replies
from gateway.smtp.admission import Admission, Client, client_host
from gateway.smtp.auth_exchange import AuthExchange
from gateway.smtp.data_reader import TooBig, read_data
from gateway.smtp.replies import Reply
from gateway.status.metrics import Metrics

log = logging.getLogger("smtp2pulse.smtp")


class SessionSet(Protocol):
    """What a session needs of the front's open sessions (gateway.smtp.server.Sessions)."""

    closing: bool
    metrics: Metrics

    def add(self, session: GatewaySession) -> None: ...

    def discard(self, session: GatewaySession) -> None: ...


class GatewayEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        # In step with rcpt_tos: each recipient resolved once, at RCPT, for DATA to use.
        self.recipients: list[Recipient] = []
        self.route_only: list[str] = []  # unserved, taken as a route names them (routing.py)


class GatewaySession(AuthExchange):
    def __init__(
        self,
        handler: Any,
        sessions: SessionSet,
        config: Config,
        *,
        admission: Admission,
        listener: Listener,
        current_config: Callable[[], Config] | None = None,
        admitted: str | None = None,
        **kwargs: Any,
    ) -> None:
        # A real HTML mail has lines far above RFC 5321's 1000 octets; any line that fits in
        # the size limit is taken (aiosmtpd reads it into a StreamReader of this limit, and
        # the DATA reader needs that limit at or above the size limit).
        self.line_length_limit = max(1001, config.smtp.max_message_size)
        self.sessions = sessions
        self.config = config  # pinned per connection: a reload applies to new ones
        # Users are looked up in the newest config: one removed by a reload cannot log in.
        self.current_config = current_config or (lambda: config)
        self.admission = admission
        self.listener = listener
        self.policy = policy_for(listener, config.smtp)
        self.client = Client(admission, config.smtp, "?", admitted or "?")
        self.busy = False
        self.holding_turn = False  # the client has had its say; our reply is pending
        self.deadline = float("inf")
        self._refusal: Reply | None = None
        self._counted = admitted is not None  # admitted (and counted) before a TLS handshake
        self._in_greeting_reply = False
        tls = config.smtp.tls
        super().__init__(
            handler,
            # An implicit-TLS session is encrypted already: offering STARTTLS there is wrong.
            tls_context=None if tls is None or listener.implicit_tls else tls.context,
            require_starttls=self.policy.require_starttls,
            # AUTH's TLS rule is applied in smtp_AUTH below, which knows about implicit TLS.
            auth_require_tls=False,
            **kwargs,
        )
        self._smtp_methods = {
            name: self._tracked(name, method) for name, method in self._smtp_methods.items()
        }

    # Never name an attribute or method auth_*: aiosmtpd takes those for AUTH mechanisms.
    @property
    def login_user(self) -> User | None:
        return self.client.user

    def _create_envelope(self) -> GatewayEnvelope:
        return GatewayEnvelope()

    # --- the connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if not first:
            self.client.user = None  # RFC 3207: after STARTTLS, forget what came before
            return
        self.sessions.add(self)
        assert self.session is not None
        self.client.host = client_host(self.session.peer)
        smtp = self.config.smtp
        self.deadline = self.loop.time() + smtp.max_session_duration
        if self._counted:
            return
        self.client.key, self._refusal = self.admission.admit(self.client.host, smtp)
        self._counted = self._refusal is None

    def connection_lost(self, error: Exception | None) -> None:
        self.client.log_unlogged_refusals()
        self.sessions.discard(self)
        self.release_slot()
        super().connection_lost(error)

    def release_slot(self) -> None:
        """Give back the connection slot; also for a session whose TLS handshake failed."""
        if self._counted:
            self._counted = False
            self.admission.connections.close(self.client.key)

    async def _handle_client(self) -> None:
        if self.sessions.closing:
            self.say_goodbye()
            return
        if self._refusal is not None:
            log.warning("refused connection from %s: %s", self.client.host, self._refusal)
            await self.push(self._refusal)
            self.hang_up()
            return
        await super()._handle_client()

    def _hold_turn(self) -> None:
        self.holding_turn = True
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    def _give_turn(self) -> None:
        self.holding_turn = False
        if self.transport is not None and not self.transport.is_closing():
            self._reset_timeout()  # the client's silence is timed from our reply on

    def _timeout_cb(self) -> None:
        if self.holding_turn:
            return  # a timer armed before the hold (aiosmtpd's own paths): not the client's
        # RFC 5321 4.5.3.2: say why before closing, so a stalled client's log tells its admin.
        if self.transport is not None and not self.transport.is_closing():
            self._writer.write(f"{replies.TIMEOUT.format(hostname=self.hostname)}\r\n".encode())
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def _tracked(
        self, name: str, method: Callable[[str | None], Awaitable[None]]
    ) -> Callable[[str | None], Awaitable[None]]:
        async def call(arg: str | None) -> None:
            if self.loop.time() > self.deadline and name != "QUIT":
                # A NOOP every few minutes would otherwise keep a session (and the config and
                # login it started with) for ever.
                log.info(
                    "closing session of %s: smtp.max_session_duration reached", self.client.host
                )
                await self.push(replies.SESSION_TOO_LONG)
                self.hang_up()
                return
            self.busy = True
            try:
                await method(arg)
            finally:
                self.busy = False
            if self.sessions.closing and name != "QUIT":
                self.say_goodbye()

        return call

    def hang_up(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def say_goodbye(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._writer.write(f"{replies.SHUTTING_DOWN}\r\n".encode())
            self.transport.close()

    def abort(self) -> None:
        # Not isinstance(asyncio.WriteTransport): uvloop's transports do not derive from it.
        abort = getattr(self.transport, "abort", None)
        if abort is not None:
            abort()

    # aiosmtpd pushes whatever this returns, so a named reply reaches `push` as one.
    async def handle_exception(self, error: Exception) -> Reply | str:  # type: ignore[override]
        if isinstance(error, TLSSetupException):
            log.info("TLS handshake with %s failed: %s", self.client.host, error.__cause__)
            return replies.TLS_UNAVAILABLE
        if isinstance(error, ValueError) and str(error).startswith("Separator is"):
            # asyncio's readline() on a line over the reader's limit: the client's doing, so one
            # line in the log, not a traceback at ERROR.
            log.warning(
                "line over %d bytes from %s refused", self.line_length_limit, self.client.host
            )
            return replies.LINE_TOO_LONG
        status: Reply | str = await super().handle_exception(error)
        return status

    # --- replies -----------------------------------------------------------------------------

    async def push(self, status: str | bytes | Reply) -> None:
        """Every reply passes here: ours are named, aiosmtpd's get their enhanced code; each
        refusal is counted under the reason its reply names."""
        if isinstance(status, bytes):
            await super().push(status)
            return
        if isinstance(status, str):
            reply = (
                None
                if self._in_greeting_reply and status.startswith("250")
                else replies.from_aiosmtpd(status)
            )
            if reply is None:
                await super().push(status)
                return
        else:
            reply = status
        self.sessions.metrics.refusal(reply.reason)
        await super().push(str(reply))

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_greeting_reply = True  # EHLO's keyword lines carry no status codes
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

    def ehlo_keywords(self, lines: Iterable[str]) -> list[str]:
        """EHLO's keyword lines without AUTH where it is not offered."""
        offered = self.offers_auth()
        return [line for line in lines if offered or not line[4:].upper().startswith("AUTH")]

    # --- MAIL, RCPT, DATA --------------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        known = addresses.precheck(arg)
        if known is not None:
            return known
        result: tuple[str | None, str | None] = super()._getaddr(arg)
        return result

    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd's smtp_DATA as of 1.4.6 (the same checks before the 354, the same hook call
        # after), with the data read in stretches by read_data. A server that decodes the
        # data, has no size limit or reads lines shorter than it (none of which the gateway
        # does) keeps aiosmtpd's own loop.
        if (
            self._decode_data
            or not self.data_size_limit
            or self.line_length_limit < self.data_size_limit
        ):
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(replies.NEED_RCPT)
            return
        if arg:
            await self.push(replies.DATA_SYNTAX)
            return
        await self.push(replies.START_DATA)
        try:
            data = await read_data(self._reader, self.data_size_limit)
        except TooBig:
            await self.push(replies.TOO_LARGE)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        except asyncio.CancelledError:
            # The client hung up or the connection broke: aiosmtpd cancels the session before
            # its reader sees the end of the stream, so readuntil never meets EOF here.
            self._writer.close()
            raise
        self.envelope.content = self.envelope.original_content = data
        # The final dot is in: the turn is the gateway's until its reply. smtp.timeout is for
        # a silent client, so it must not fire while the spool commits (a 421 then, and the
        # message stored anyway, is a duplicate when the client sends again).
        self._hold_turn()
        try:
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(replies.OK if status is MISSING else status)
        finally:
            self._give_turn()
