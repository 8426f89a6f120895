"""Who may talk to the SMTP front and what they may do: the session side of access control.

`GuardedSMTP` sits between aiosmtpd's SMTP and the gateway's GatewaySMTP. It admits or refuses a
connection (network, blocked address, connection caps), applies its listener's policy (STARTTLS
before MAIL, AUTH before MAIL), runs SMTP AUTH itself (so that the password check runs in a thread,
failures are counted per address, and AUTH is offered only where the policy says), and answers
the per-user, rate-limit and hygiene questions the handler asks at MAIL, RCPT and DATA.

Implicit-TLS (SMTPS) connections are admitted the same way (`Guard.admit`), but at TCP accept,
before their TLS handshake: see gateway.smtps.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from base64 import b64decode, b64encode
from collections.abc import Callable, Iterable
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, TLSSetupException
from prometheus_client import CollectorRegistry

from gateway.config.access import User, policy_for
from gateway.config.loader import Config, Listener, SmtpConfig
from gateway.config.networks import address_key, allowed
from gateway.smtp import hygiene
from gateway.smtp.limits import ConnectionCounter, LoginFailures, RateLimiter
from gateway.smtp.passwords import verify_password
from gateway.smtp.replies import (
    REPLY_AUTH_IN_TRANSACTION,
    REPLY_AUTH_LINE_TOO_LONG,
    REPLY_LINE_TOO_LONG,
    REPLY_NETWORK_REFUSED,
)

log = logging.getLogger("smtp2pulse.smtp")

# Checked for an unknown user name, so that its answer takes as long as a known one's.
_NOBODY = ("scrypt$16384$8$1$kF+QN4oNk+fRaspKNN7UTw==$"
           "M4n1ira3IJPHjyCQfzIY/D6DcBcxsyGd3La3+DtO1uI=")
REPLY_AUTH_REQUIRED = "530 5.7.0 Authentication required"
REPLY_BAD_CREDENTIALS = "535 5.7.8 Authentication credentials invalid"
REPLY_LOGIN_BLOCKED = "421 4.7.0 Too many failed logins from your address, try again later"
# RFC 4954 section 4: an AUTH exchange line may be up to 12288 octets; nothing longer is read.
AUTH_LINE_LIMIT = 12288


class Guard:
    """What all sessions of one SMTP front share: connection counts, rates, failed logins."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = ConnectionCounter()
        self.rates = RateLimiter()
        self.logins = LoginFailures()
        self.filtered = hygiene.Filtered(registry)

    def admit(self, host: str, smtp: SmtpConfig) -> tuple[str, str | None]:
        """The key a client is counted by, and why it may not connect (None: admitted, and
        counted: the caller must release the key with connections.close)."""
        key = address_key(host, smtp.ipv6_prefix)
        if not allowed(host, smtp.allow_networks):
            return key, REPLY_NETWORK_REFUSED
        if self.logins.is_blocked(key):
            return key, REPLY_LOGIN_BLOCKED
        why = self.connections.try_open(key, smtp.max_connections,
                                        smtp.max_connections_per_address)
        if why is not None:
            return key, f"421 4.7.0 {why.capitalize()}, try again later"
        return key, None


def client_host(peer: Any) -> str:
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer or "?")
    return str(host).removeprefix("::ffff:")    # dual-stack sockets report IPv4 clients so


class GuardedSMTP(SMTP):
    def __init__(self, handler: Any, *, guard: Guard, listener: Listener, config: Config,
                 current_config: Callable[[], Config] | None = None,
                 admitted: str | None = None, **kwargs: Any) -> None:
        self.guard = guard
        self.listener = listener
        self.policy = policy_for(listener, config.smtp)
        # Never name an attribute or method auth_*: aiosmtpd takes those for AUTH mechanisms.
        self.login_user: User | None = None
        self._client = "?"
        self._key = admitted or "?"           # what limits and the login block count
        self._refusal: str | None = None
        self._counted = admitted is not None  # admitted (and counted) before a TLS handshake
        self.access_config = config           # pinned for the session's policy and limits
        # Users are looked up in the newest config: one removed by a reload cannot log in.
        self.current_config = current_config or (lambda: config)
        self.deadline = float("inf")
        tls = config.smtp.tls
        super().__init__(
            handler,
            # An implicit-TLS session is encrypted already: offering STARTTLS there is wrong.
            tls_context=None if tls is None or listener.implicit_tls else tls.context,
            require_starttls=self.policy.require_starttls,
            # AUTH's TLS rule is applied in smtp_AUTH below, which knows about implicit TLS.
            auth_require_tls=False,
            **kwargs)

    # --- admission ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if not first:
            self.login_user = None     # RFC 3207: after STARTTLS, forget what came before
            return
        assert self.session is not None
        self._client = client_host(self.session.peer)
        smtp = self.access_config.smtp
        self.deadline = self.loop.time() + smtp.max_session_duration
        if self._counted:
            return
        self._key, self._refusal = self.guard.admit(self._client, smtp)
        self._counted = self._refusal is None

    def connection_lost(self, error: Exception | None) -> None:
        self.release_slot()
        super().connection_lost(error)

    def release_slot(self) -> None:
        """Give back the connection slot; also for a session whose TLS handshake failed."""
        if self._counted:
            self._counted = False
            self.guard.connections.close(self._key)

    async def _handle_client(self) -> None:
        if self._refusal is not None:
            log.warning("refused connection from %s: %s", self._client, self._refusal)
            await self.push(self._refusal)
            self._close()
            return
        await super()._handle_client()

    def _timeout_cb(self) -> None:
        # RFC 5321 4.5.3.2: say why before closing, so a stalled client's log tells its admin.
        if self.transport is not None and not self.transport.is_closing():
            self._writer.write(f"421 4.4.2 {self.hostname} Timeout, closing connection\r\n"
                               .encode())
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            log.info("TLS handshake with %s failed: %s", self._client, error.__cause__)
            return "454 4.7.0 TLS not available due to temporary reason"
        if isinstance(error, ValueError) and str(error).startswith("Separator is"):
            # asyncio's readline() on a line over the reader's limit: the client's doing, so one
            # line in the log, not a traceback at ERROR.
            log.warning("line over %d bytes from %s refused", self.line_length_limit,
                        self._client)
            return REPLY_LINE_TOO_LONG
        status: str = await super().handle_exception(error)
        return status

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # Bytes that are not UTF-8 (aiosmtpd keeps them as lone surrogates) or control
        # characters make an address nobody can store, log or answer to: a malformed one.
        if any(ch < " " or "\udc80" <= ch <= "\udcff" for ch in arg):
            return None, None
        result: tuple[str | None, str | None] = super()._getaddr(arg)
        return result

    # --- TLS and AUTH ------------------------------------------------------------------------

    def encrypted(self) -> bool:
        return self.policy.implicit_tls or self._tls_protocol is not None

    def offers_auth(self) -> bool:
        auth = self.access_config.smtp.auth
        return auth is not None and (self.encrypted() or self.policy.offer_auth_in_clear)

    def ehlo_keywords(self, lines: Iterable[str]) -> list[str]:
        """EHLO's keyword lines without AUTH where it is not offered."""
        offered = self.offers_auth()
        return [line for line in lines if offered or not line[4:].upper().startswith("AUTH")]

    async def check_auth_needed(self, caller_method: str) -> bool:
        if self.policy.require_auth and self.login_user is None:
            await self.push(REPLY_AUTH_REQUIRED)
            return True
        return False

    async def smtp_AUTH(self, arg: str) -> None:
        if await self.check_helo_needed("EHLO"):
            return
        if self.access_config.smtp.auth is None:
            await self.push("502 5.5.1 AUTH not available")
            return
        if not self.offers_auth():
            await self.push("538 5.7.11 Encryption required for requested authentication "
                            "mechanism")
            return
        assert self.envelope is not None
        if self.envelope.mail_from is not None:
            # RFC 4954 section 4; else RCPT would be checked for one identity and the mail
            # sent (and paid for) as another.
            await self.push(REPLY_AUTH_IN_TRANSACTION)
            return
        if await self._refused_while_blocked():
            return
        await super().smtp_AUTH(arg)

    async def _refused_while_blocked(self) -> bool:
        # Sessions opened before the block must not keep guessing during it.
        if not self.guard.logins.is_blocked(self._key):
            return False
        log.warning("AUTH from %s refused: address blocked after failed logins", self._client)
        await self.push(REPLY_LOGIN_BLOCKED)
        self._close()
        return True

    async def challenge_auth(self, challenge: str | bytes, encode_to_b64: bool = True,
                             log_client_response: bool = False) -> Any:
        # aiosmtpd's own reads the answer with readline(), which raises on a line over the
        # reader's limit (a 451 and a traceback at ERROR, for any client that asks); this one
        # reads at most AUTH_LINE_LIMIT and answers as RFC 4954 says.
        data = challenge.encode() if isinstance(challenge, str) else challenge
        await self.push(b"334 " + (b64encode(data) if encode_to_b64 else data))
        line = await self._auth_line()
        if line is None:
            log.warning("AUTH from %s: exchange line over %d bytes refused", self._client,
                        AUTH_LINE_LIMIT)
            await self.push(REPLY_AUTH_LINE_TOO_LONG)
            return MISSING
        blob = line.strip()
        if blob == b"*":
            await self.push("501 5.7.0 Auth aborted")
            return MISSING
        try:
            return b64decode(blob, validate=True)
        except binascii.Error:
            await self.push("501 5.5.2 Can't decode base64")
            return MISSING

    async def _auth_line(self) -> bytes | None:
        """The client's next line, or None (read to its end) when it is over the limit."""
        too_long = False
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                line = exc.partial          # the end of the stream: the session ends anyway
            except asyncio.LimitOverrunError as exc:
                await self._reader.readexactly(exc.consumed)
                too_long = True
                continue
            if too_long or len(line) > AUTH_LINE_LIMIT:
                return None
            return line

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd's PLAIN and LOGIN decode the exchange and end here, synchronously; hand the
        # pair back so the overrides below can check it in a thread (scrypt takes a while).
        return AuthResult(success=True, auth_data=auth_data)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._checked(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._checked(await super().auth_LOGIN(_, args))

    async def _checked(self, exchange: AuthResult) -> AuthResult:
        if not exchange.success or not isinstance(exchange.auth_data, LoginPassword):
            # Aborted or undecodable: answered already (aiosmtpd would add a 535 to some).
            return AuthResult(success=False, handled=True)
        auth = self.access_config.smtp.auth       # the session's limits
        assert auth is not None
        current = self.current_config().smtp.auth
        login, password = exchange.auth_data
        try:
            name, secret = login.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            name, secret = "", ""
        user = current.users.get(name) if current is not None else None
        stored = user.password_hash.reveal() if user is not None else _NOBODY
        matches = await asyncio.to_thread(verify_password, secret, stored)
        # Parallel sessions may have blocked the address during the check: then no answer
        # tells this guess from a wrong one.
        if await self._refused_while_blocked():
            return AuthResult(success=False, handled=True)
        if matches and user is not None:
            self.guard.logins.succeed(self._key)
            self.login_user = user
            log.info("AUTH user=%s from %s", user.name, self._client)
            return await self._succeeded()
        anonymous = self.policy.accept_any_credentials
        if anonymous and user is None:
            # Legacy devices send made-up names: not counted, or the switch would block them.
            log.info("AUTH from %s: credentials not recognised, session stays anonymous "
                     "(accept_any_credentials)", self._client)
            return await self._succeeded()
        # A configured user's name with a wrong password is a guess on a real account: counted
        # on every listener.
        blocked = self.guard.logins.fail(self._key, auth.max_failures, auth.block_for)
        # A name that is no user may be a password typed in the wrong field: never log it.
        log.warning("AUTH failed from %s for %s%s", self._client,
                    f"user={name}" if user is not None else "an unknown user",
                    f"; address blocked for {auth.block_for:.0f}s" if blocked else "")
        if blocked:
            await self.push(REPLY_LOGIN_BLOCKED)
            self._close()
        elif anonymous:
            return await self._succeeded()     # as for any unrecognised credentials here
        else:
            await self.push(REPLY_BAD_CREDENTIALS)
        return AuthResult(success=False, handled=True)

    async def _succeeded(self) -> AuthResult:
        # Answered here rather than by aiosmtpd, whose success path sets the deprecated
        # Session.login_data and logs a warning for every login.
        assert self.session is not None
        self.session.authenticated = True
        await self.push("235 2.7.0 Authentication successful")
        return AuthResult(success=False, handled=True)

    # --- questions the handler asks ----------------------------------------------------------

    def mail_refusal(self, mail_from: str) -> str | None:
        """At MAIL: a bounce the config refuses, or a client already over its rate."""
        smtp = self.access_config.smtp
        if hygiene.is_null_sender(mail_from) and smtp.null_sender == "refuse":
            self.guard.filtered.count("null_sender", "refused")
            return hygiene.REFUSALS["null_sender"]
        return self._rate_refusal(take=False)

    def recipient_refusal(self, domain: str) -> str | None:
        """At RCPT: a domain the authenticated user may not send to."""
        user = self.login_user
        if user is not None and user.domains and domain not in user.domains:
            return f"550 5.7.1 User {user.name} may not send to {domain}"
        return None

    def data_verdict(self, envelope: Envelope, raw: bytes) -> str | None:
        """At the end of DATA, before parsing: the reply for mail not to send, else None."""
        smtp = self.access_config.smtp
        kind = ("null_sender" if hygiene.is_null_sender(envelope.mail_from) else
                "auto_submitted" if hygiene.auto_generated(raw) else None)
        action = getattr(smtp, kind) if kind is not None else "accept"
        if kind is None or action == "accept":
            return None
        log.info("%s from <%s> %s: %s", kind.replace("_", " "), envelope.mail_from,
                 self._client, "refused" if action == "refuse" else "dropped")
        self.guard.filtered.count(kind, "refused" if action == "refuse" else "dropped")
        return hygiene.REFUSALS[kind] if action == "refuse" else hygiene.DROPPED[kind]

    def sender_refusal(self, sender_names: Iterable[str]) -> str | None:
        """After mapping: a platform sender name the authenticated user may not use."""
        user = self.login_user
        if user is None or user.senders is None:
            return None
        for name in sender_names:
            if name not in user.senders:
                return f"550 5.7.1 User {user.name} may not use the sender name {name!r}"
        return None

    def take_rate(self) -> str | None:
        """Just before storing: count the message, or the 451 that says to come back later."""
        return self._rate_refusal(take=True)

    def _rate_refusal(self, take: bool) -> str | None:
        smtp, rates = self.access_config.smtp, self.guard.rates
        limits = [(f"address:{self._key}", smtp.max_messages_per_minute_per_address,
                   "your address")]
        if self.login_user is not None:
            limits.append((f"user:{self.login_user.name}", smtp.max_messages_per_minute_per_user,
                           f"user {self.login_user.name}"))
        for key, limit, who in limits:
            if rates.full(key, limit):
                log.warning("rate limit: %s over %d messages a minute", key, limit)
                return (f"451 4.7.1 Too many messages from {who} (at most {limit} a minute), "
                        "try again later")
        if take:
            for key, limit, _ in limits:
                rates.take(key, limit)
        return None
