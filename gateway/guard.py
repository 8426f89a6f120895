"""Who may talk to the SMTP front and what they may do: the session side of access control.

`GuardedSMTP` sits between aiosmtpd's SMTP and the gateway's GatewaySMTP. It admits or refuses a
connection (blocked address, connection caps), applies its listener's policy (STARTTLS before
MAIL, AUTH before MAIL), runs SMTP AUTH itself (so that the password check runs in a thread,
failures are counted per address, and AUTH is offered only where the policy says), and answers
the per-user, rate-limit and hygiene questions the handler asks at MAIL, RCPT and DATA.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, TLSSetupException
from prometheus_client import CollectorRegistry

from gateway import hygiene, tls
from gateway.access import User, policy_for
from gateway.config import Config, Listener
from gateway.limits import ConnectionCounter, LoginFailures, RateLimiter
from gateway.passwords import verify_password

log = logging.getLogger("smtp2pulse.smtp")

# Checked for an unknown user name, so that its answer takes as long as a known one's.
_NOBODY = ("scrypt$16384$8$1$kF+QN4oNk+fRaspKNN7UTw==$"
           "M4n1ira3IJPHjyCQfzIY/D6DcBcxsyGd3La3+DtO1uI=")
REPLY_AUTH_REQUIRED = "530 5.7.0 Authentication required"
REPLY_BAD_CREDENTIALS = "535 5.7.8 Authentication credentials invalid"
REPLY_LOGIN_BLOCKED = "421 4.7.0 Too many failed logins from your address, try again later"


class Guard:
    """What all sessions of one SMTP front share: connection counts, rates, failed logins."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = ConnectionCounter()
        self.rates = RateLimiter()
        self.logins = LoginFailures()
        self.filtered = hygiene.Filtered(registry)


def implicit_tls(listener: Listener, config: Callable[[], Config]) -> dict[str, Any]:
    """create_server()'s TLS arguments for an implicit-TLS (SMTPS) listener; {} for others."""
    settings = config().smtp.tls
    if not listener.implicit_tls or settings is None:
        return {}

    def newest() -> Any:
        current = config().smtp.tls
        return current.context if current is not None else None
    return {"ssl": tls.switching_context(newest, settings.context),
            "ssl_handshake_timeout": config().smtp.timeout}


def client_host(peer: Any) -> str:
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer or "?")
    return str(host).removeprefix("::ffff:")    # dual-stack sockets report IPv4 clients so


class GuardedSMTP(SMTP):
    def __init__(self, handler: Any, *, guard: Guard, listener: Listener, config: Config,
                 **kwargs: Any) -> None:
        self.guard = guard
        self.listener = listener
        self.policy = policy_for(listener, config.smtp)
        # Never name an attribute or method auth_*: aiosmtpd takes those for AUTH mechanisms.
        self.login_user: User | None = None
        self._client = "?"
        self._refusal: str | None = None
        self._counted = False
        self.access_config = config
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
        if self.guard.logins.is_blocked(self._client):
            self._refusal = REPLY_LOGIN_BLOCKED
            return
        why = self.guard.connections.try_open(self._client, smtp.max_connections,
                                              smtp.max_connections_per_address)
        if why is not None:
            self._refusal = f"421 4.7.0 {why.capitalize()}, try again later"
        else:
            self._counted = True

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self.guard.connections.close(self._client)
        super().connection_lost(error)

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
        await super().smtp_AUTH(arg)

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
            return exchange      # aborted or undecodable: aiosmtpd has answered already
        auth = self.access_config.smtp.auth
        assert auth is not None
        login, password = exchange.auth_data
        try:
            name, secret = login.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            name, secret = "", ""
        user = auth.users.get(name)
        stored = user.password_hash.reveal() if user is not None else _NOBODY
        matches = await asyncio.to_thread(verify_password, secret, stored)
        if matches and user is not None:
            self.guard.logins.succeed(self._client)
            self.login_user = user
            log.info("AUTH user=%s from %s", user.name, self._client)
            return await self._succeeded()
        if auth.accept_any_credentials:
            log.info("AUTH from %s: credentials not recognised, session stays anonymous "
                     "(accept_any_credentials)", self._client)
            return await self._succeeded()
        blocked = self.guard.logins.fail(self._client, auth.max_failures, auth.block_for)
        # A name that is no user may be a password typed in the wrong field: never log it.
        log.warning("AUTH failed from %s for %s%s", self._client,
                    f"user={name}" if user is not None else "an unknown user",
                    f"; address blocked for {auth.block_for:.0f}s" if blocked else "")
        if blocked:
            await self.push(REPLY_LOGIN_BLOCKED)
            self._close()
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
        limits = [(f"address:{self._client}", smtp.max_messages_per_minute_per_address,
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
