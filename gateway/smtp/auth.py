"""SMTP AUTH for the session: reading the exchange, checking a login, blocking an address.

aiosmtpd runs the PLAIN and LOGIN exchanges; what it would do after (check the pair
synchronously, read answer lines of any length) is replaced here: the password check runs in a
thread (scrypt takes a while), failed logins are counted per client address, and an exchange
line longer than RFC 4954 allows is read to its end and refused.
"""

from __future__ import annotations

import asyncio
import binascii
import time
from base64 import b64decode
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config.model import AuthSettings, User
from gateway.smtp import replies
from gateway.smtp.passwords import verify_password
from gateway.smtp.replies import Reply

Clock = Callable[[], float]
# RFC 4954 section 4: an AUTH exchange line may be up to 12288 octets; nothing longer is read.
AUTH_LINE_LIMIT = 12288
# Checked for an unknown user name, so that its answer takes as long as a known one's.
_NOBODY = "scrypt$16384$8$1$kF+QN4oNk+fRaspKNN7UTw==$M4n1ira3IJPHjyCQfzIY/D6DcBcxsyGd3La3+DtO1uI="


async def read_answer(reader: asyncio.StreamReader) -> bytes | Reply:
    """The client's decoded answer to a 334 challenge, or the reply that refuses it."""
    line = await _line(reader)
    if line is None:
        return replies.AUTH_LINE_TOO_LONG
    blob = line.strip()
    if blob == b"*":
        return replies.AUTH_ABORTED
    try:
        return b64decode(blob, validate=True)
    except binascii.Error:
        return replies.AUTH_NOT_BASE64


async def _line(reader: asyncio.StreamReader) -> bytes | None:
    """The client's next line, or None (read to its end) when it is over the limit."""
    too_long = False
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            line = exc.partial  # the end of the stream: the session ends anyway
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)
            too_long = True
            continue
        if too_long or len(line) > AUTH_LINE_LIMIT:
            return None
        return line


@dataclass(frozen=True, slots=True)
class Login:
    name: str  # as the client sent it (never logged unless it is a user)
    user: User | None  # the configured user of that name, if any
    matches: bool  # the password is that user's


async def check_login(login: bytes, password: bytes, auth: AuthSettings | None) -> Login:
    """Look the pair up in `auth` (the newest config's: a user removed by a reload cannot log
    in) and check the password in a thread."""
    try:
        name, secret = login.decode("utf-8"), password.decode("utf-8")
    except UnicodeDecodeError:
        name, secret = "", ""
    user = auth.users.get(name) if auth is not None else None
    stored = user.password_hash.reveal() if user is not None else _NOBODY
    matches = await asyncio.to_thread(verify_password, secret, stored)
    return Login(name, user, matches and user is not None)


class LoginFailures:
    """Failed AUTH attempts per client address, and the addresses blocked for too many."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.failures: dict[str, tuple[int, float]] = {}  # address -> (count, last failure)
        self.blocked: dict[str, float] = {}  # address -> blocked until

    def is_blocked(self, address: str) -> bool:
        until = self.blocked.get(address)
        if until is None:
            return False
        if until <= self.clock():
            del self.blocked[address]
            return False
        return True

    def fail(self, address: str, max_failures: int, block_for: float) -> bool:
        """Count a failure; True when it blocks the address (and resets its count)."""
        now = self.clock()
        count, last = self.failures.get(address, (0, now))
        if now - last > block_for:
            count = 0  # old failures, long forgiven
        count += 1
        if count >= max_failures:
            self.failures.pop(address, None)
            self.blocked[address] = now + block_for
            self._forget_old(block_for)
            return True
        self.failures[address] = (count, now)
        self._forget_old(block_for)
        return False

    def succeed(self, address: str) -> None:
        self.failures.pop(address, None)

    def _forget_old(self, block_for: float) -> None:
        if len(self.failures) + len(self.blocked) < 1000:
            return
        now = self.clock()
        self.failures = {a: v for a, v in self.failures.items() if now - v[1] <= block_for}
        self.blocked = {a: until for a, until in self.blocked.items() if until > now}
