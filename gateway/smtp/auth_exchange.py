"""SMTP AUTH and the TLS state it depends on, for the gateway's session (gateway.smtp.session).

`AuthExchange` is the part of GatewaySession that answers AUTH: aiosmtpd runs the PLAIN and
LOGIN exchanges, this checks the pair in a thread (gateway.smtp.auth), counts failed guesses per
client address and blocks it after too many, and answers with the gateway's named replies.
GatewaySession derives from it; the session's own `push` (which renders and counts named
replies) and `hang_up` are the ones called here.

aiosmtpd names relied on that are not its documented API: `_authenticate` (the end of its PLAIN
and LOGIN exchanges), `_tls_protocol` (set once STARTTLS succeeded), `_reader` (for the exchange
line) and the hooks `challenge_auth`, `check_auth_needed`, `check_helo_needed`, `auth_PLAIN`,
`auth_LOGIN` (public but undocumented, overridden or called as aiosmtpd itself does). Never name
an attribute or method auth_* here: aiosmtpd takes those for AUTH mechanisms.
"""

from __future__ import annotations

import logging
from base64 import b64encode
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword

from gateway.config.access import ListenerPolicy
from gateway.config.model import Config
from gateway.smtp import auth, replies
from gateway.smtp.admission import Admission, Client
from gateway.smtp.replies import Reply

log = logging.getLogger("smtp2pulse.smtp")


class AuthExchange(SMTP):
    # Set by GatewaySession.__init__.
    config: Config
    current_config: Callable[[], Config]
    admission: Admission
    client: Client
    policy: ListenerPolicy

    if TYPE_CHECKING:  # GatewaySession's

        async def push(self, status: str | bytes | Reply) -> None: ...

        def hang_up(self) -> None: ...

    def encrypted(self) -> bool:
        return self.policy.implicit_tls or self._tls_protocol is not None

    def offers_auth(self) -> bool:
        return self.config.smtp.auth is not None and (
            self.encrypted() or self.policy.offer_auth_in_clear
        )

    async def check_auth_needed(self, caller_method: str) -> bool:
        if self.policy.require_auth and self.client.user is None:
            await self.push(replies.AUTH_REQUIRED)
            return True
        return False

    async def smtp_AUTH(self, arg: str) -> None:
        if await self.check_helo_needed("EHLO"):
            return
        if self.config.smtp.auth is None:
            await self.push(replies.AUTH_UNAVAILABLE)
            return
        if not self.offers_auth():
            await self.push(replies.AUTH_NEEDS_TLS)
            return
        assert self.envelope is not None
        if self.envelope.mail_from is not None:
            # RFC 4954 section 4; else RCPT would be checked for one identity and the mail
            # sent (and paid for) as another.
            await self.push(replies.AUTH_IN_TRANSACTION)
            return
        if await self._refused_while_blocked():
            return
        await super().smtp_AUTH(arg)

    async def _refused_while_blocked(self) -> bool:
        # Sessions opened before the block must not keep guessing during it.
        if not self.admission.logins.is_blocked(self.client.key):
            return False
        log.warning("AUTH from %s refused: address blocked after failed logins", self.client.host)
        await self.push(replies.LOGIN_BLOCKED)
        self.hang_up()
        return True

    async def challenge_auth(
        self, challenge: str | bytes, encode_to_b64: bool = True, log_client_response: bool = False
    ) -> Any:
        # aiosmtpd's own reads the answer with readline(), which raises on a line over the
        # reader's limit (a 451 and a traceback at ERROR, for any client that asks); this one
        # reads at most auth.AUTH_LINE_LIMIT and answers as RFC 4954 says.
        data = challenge.encode() if isinstance(challenge, str) else challenge
        await self.push(b"334 " + (b64encode(data) if encode_to_b64 else data))
        answer = await auth.read_answer(self._reader)
        if not isinstance(answer, Reply):
            return answer
        if answer is replies.AUTH_LINE_TOO_LONG:
            log.warning(
                "AUTH from %s: exchange line over %d bytes refused",
                self.client.host,
                auth.AUTH_LINE_LIMIT,
            )
        await self.push(answer)
        return MISSING

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
        settings = self.config.smtp.auth  # the session's limits
        assert settings is not None
        login = await auth.check_login(*exchange.auth_data, self.current_config().smtp.auth)
        # Parallel sessions may have blocked the address during the check: then no answer
        # tells this guess from a wrong one.
        if await self._refused_while_blocked():
            return AuthResult(success=False, handled=True)
        if login.matches and login.user is not None:
            self.admission.logins.succeed(self.client.key)
            self.client.user = login.user
            log.info("AUTH user=%s from %s", login.user.name, self.client.host)
            return await self._succeeded()
        anonymous = self.policy.accept_any_credentials
        if anonymous and login.user is None:
            # Legacy devices send made-up names: not counted, or the switch would block them.
            log.info(
                "AUTH from %s: credentials not recognised, session stays anonymous "
                "(accept_any_credentials)",
                self.client.host,
            )
            return await self._succeeded()
        # A configured user's name with a wrong password is a guess on a real account: counted
        # on every listener, once per pair and session (see Client.guessed_again).
        again = self.client.guessed_again(*exchange.auth_data)
        blocked = not again and self.admission.logins.fail(
            self.client.key, settings.max_failures, settings.block_for
        )
        # A name that is no user may be a password typed in the wrong field: never log it.
        log.warning(
            "AUTH failed from %s for %s%s",
            self.client.host,
            f"user={login.name}" if login.user is not None else "an unknown user",
            f"; address blocked for {settings.block_for:.0f}s"
            if blocked
            else "; the same credentials again, not counted"
            if again
            else "",
        )
        if blocked:
            await self.push(replies.LOGIN_BLOCKED)
            self.hang_up()
        elif anonymous:
            return await self._succeeded()  # as for any unrecognised credentials here
        else:
            await self.push(replies.BAD_CREDENTIALS)
        return AuthResult(success=False, handled=True)

    async def _succeeded(self) -> AuthResult:
        # Answered here rather than by aiosmtpd, whose success path sets the deprecated
        # Session.login_data and logs a warning for every login.
        assert self.session is not None
        self.session.authenticated = True
        await self.push(replies.AUTH_OK)
        return AuthResult(success=False, handled=True)
