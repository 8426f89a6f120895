"""Who may connect and send: networks, connection caps, message rates, bounces and auto-replies.

`Admission` is what all sessions of one SMTP front share (open connections, message rates,
failed logins); `Client` is one session's view of it, answering the questions the handler asks
at MAIL, RCPT and DATA. Counting is in memory and per process (a restart forgets it, which is
fine for limits measured in minutes); every table forgets keys that no longer count for
anything, so a scan from a million addresses costs memory only while it lasts.

Bounces (`MAIL FROM:<>`) and out-of-office replies would otherwise turn into SMS nobody wanted,
and a loop between two auto-responders into a bill: `smtp.null_sender` and
`smtp.auto_submitted` say whether to refuse them (5xx), drop them (250, nothing stored) or accept
them as any other mail.

Implicit-TLS (SMTPS) connections are admitted the same way (`Admission.admit`), but at TCP
accept, before their TLS handshake: see gateway.smtp.smtps.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from gateway.config.model import SmtpConfig, User
from gateway.config.networks import address_key, allowed
from gateway.smtp import replies
from gateway.smtp.auth import LoginFailures
from gateway.smtp.replies import Reply
from gateway.status.metrics import Metrics

log = logging.getLogger("smtp2pulse.smtp")

Clock = Callable[[], float]
WINDOW = 60.0  # messages are counted per minute
LOGGED_RCPT_REFUSALS = 5  # refused recipients of a session logged one by one; then counted
NULL_SENDERS = ("", "<>")
# Typical markers of automatic mail besides RFC 3834's Auto-Submitted: Exchange, Outlook and
# the vacation programs of Unix, cPanel, Zimbra and friends.
_MARKERS = re.compile(
    rb"^(?:x-autoreply|x-autorespond|x-autoresponder|x-auto-reply|x-vacation-reply)[ \t]*:"
    rb"|^(?:x-)?precedence[ \t]*:[ \t]*auto[-_]reply"
    rb"|^auto-submitted[ \t]*:[ \t]*(?!no[ \t]*(?:[;(\r\n]|$))\S"
    rb"|^content-type[ \t]*:[ \t]*multipart/report",
    re.IGNORECASE | re.MULTILINE,
)
_HEADER_SCAN_LIMIT = 256 * 1024
_REFUSED = {"null_sender": replies.BOUNCE_REFUSED, "auto_submitted": replies.AUTO_REPLY_REFUSED}
_DROPPED = {"null_sender": replies.BOUNCE_DROPPED, "auto_submitted": replies.AUTO_REPLY_DROPPED}


class Admission:
    """What all sessions of one SMTP front share: connection counts, rates, failed logins."""

    def __init__(self, metrics: Metrics) -> None:
        self.connections = ConnectionCounter()
        self.rates = RateLimiter()
        self.logins = LoginFailures()
        self.metrics = metrics

    def admit(self, host: str, smtp: SmtpConfig) -> tuple[str, Reply | None]:
        """The key a client is counted by, and why it may not connect (None: admitted, and
        counted: the caller must release the key with connections.close)."""
        key = address_key(host, smtp.ipv6_prefix)
        if not allowed(host, smtp.allow_networks):
            return key, replies.NETWORK_REFUSED
        if self.logins.is_blocked(key):
            return key, replies.LOGIN_BLOCKED
        return key, self.connections.try_open(
            key, smtp.max_connections, smtp.max_connections_per_address
        )


def client_host(peer: Any) -> str:
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer or "?")
    return str(host).removeprefix("::ffff:")  # dual-stack sockets report IPv4 clients so


class Client:
    """One session's client: what it may send, with the session's pinned config."""

    def __init__(self, admission: Admission, smtp: SmtpConfig, host: str, key: str) -> None:
        self.admission = admission
        self.smtp = smtp
        self.host = host
        self.key = key  # what limits and the login block count
        self.user: User | None = None  # the login, once AUTH succeeded
        self._failed_pairs: set[bytes] = set()  # digests of the pairs refused in the session
        self._refused_recipients = 0

    def guessed_again(self, login: bytes, password: bytes) -> bool:
        """Whether this session was refused this very pair already: smtplib tries PLAIN, then
        LOGIN, with what it was given, which is one guess, not two. (A digest: the password is
        not kept.)"""
        pair = hashlib.sha256(login + b"\0" + password).digest()
        again = pair in self._failed_pairs
        self._failed_pairs.add(pair)
        return again

    def log_refused_recipient(self, address: str, why: object) -> None:
        """The first few of a session one by one; then only counted (a client spraying RCPTs
        wrote 22 MB of log in 150 s), the count logged when the session ends."""
        self._refused_recipients += 1
        if self._refused_recipients <= LOGGED_RCPT_REFUSALS:
            log.info(
                "refused recipient <%s> from %s: %s%s",
                address,
                self.host,
                why,
                "; further ones in this session are counted, not logged"
                if self._refused_recipients == LOGGED_RCPT_REFUSALS
                else "",
            )

    def log_unlogged_refusals(self) -> None:
        if self._refused_recipients > LOGGED_RCPT_REFUSALS:
            log.info(
                "%d more recipients refused from %s in that session (not logged one by one)",
                self._refused_recipients - LOGGED_RCPT_REFUSALS,
                self.host,
            )

    def mail_refusal(self, mail_from: str) -> Reply | None:
        """At MAIL: a bounce the config refuses, or a client already over its rate."""
        if is_null_sender(mail_from) and self.smtp.null_sender == "refuse":
            self.admission.metrics.filtered.labels("null_sender", "refused").inc()
            return replies.BOUNCE_REFUSED
        return self._rate_refusal(take=False)

    def recipient_refusal(self, domain: str) -> Reply | None:
        """At RCPT: a domain the authenticated user may not send to."""
        user = self.user
        if user is not None and user.domains and domain not in user.domains:
            return replies.USER_MAY_NOT_SEND_TO.format(user=user.name, domain=domain)
        return None

    def data_verdict(self, mail_from: str | None, raw: bytes) -> Reply | None:
        """At the end of DATA, before parsing: the reply for mail not to send, else None."""
        kind = (
            "null_sender"
            if is_null_sender(mail_from)
            else "auto_submitted"
            if auto_generated(raw)
            else None
        )
        action = getattr(self.smtp, kind) if kind is not None else "accept"
        if kind is None or action == "accept":
            return None
        done = "refused" if action == "refuse" else "dropped"
        log.info("%s from <%s> %s: %s", kind.replace("_", " "), mail_from, self.host, done)
        self.admission.metrics.filtered.labels(kind, done).inc()
        return _REFUSED[kind] if action == "refuse" else _DROPPED[kind]

    def sender_refusal(self, sender_names: Iterable[str]) -> Reply | None:
        """After mapping: a platform sender name the authenticated user may not use."""
        user = self.user
        if user is None or user.senders is None:
            return None
        for name in sender_names:
            if name not in user.senders:
                return replies.USER_MAY_NOT_USE_SENDER.format(user=user.name, name=name)
        return None

    def take_rate(self) -> Reply | None:
        """Just before storing: count the message, or the 451 that says to come back later."""
        return self._rate_refusal(take=True)

    def _rate_refusal(self, take: bool) -> Reply | None:
        smtp, rates = self.smtp, self.admission.rates
        limits = [(f"address:{self.key}", smtp.max_messages_per_minute_per_address, "your address")]
        if self.user is not None:
            limits.append(
                (
                    f"user:{self.user.name}",
                    smtp.max_messages_per_minute_per_user,
                    f"user {self.user.name}",
                )
            )
        for key, limit, who in limits:
            if rates.full(key, limit):
                log.warning("rate limit: %s over %d messages a minute", key, limit)
                return replies.RATE_LIMITED.format(who=who, limit=limit)
        if take:
            for key, limit, _ in limits:
                rates.take(key, limit)
        return None


def is_null_sender(mail_from: str | None) -> bool:
    return mail_from is None or mail_from in NULL_SENDERS


def auto_generated(raw: bytes) -> bool:
    """Does the header block mark the message as automatic (auto-reply, report, vacation)?"""
    head = raw[: header_end(raw, _HEADER_SCAN_LIMIT)].lower()
    # Every marker holds one of these words; most header blocks have none and need no regex.
    if b"auto" not in head and b"vacation" not in head and b"report" not in head:
        return False
    return _MARKERS.search(head) is not None


def header_end(raw: bytes, limit: int) -> int:
    """Where the first blank line starts (CRLF or LF), within raw[:limit]; else limit.

    What re.search(rb"\r?\n\r?\n", raw, 0, limit) finds, for a third of its cost: the earliest
    LF followed by a line that is empty, with the CR before that LF if there is one.
    """
    crlf = raw.find(b"\n\r\n", 0, limit)
    lf = raw.find(b"\n\n", 0, crlf + 1 if crlf >= 0 else limit)
    found = lf if lf >= 0 else crlf
    if found < 0:
        return limit
    return found - 1 if found > 0 and raw[found - 1] == 0x0D else found


class ConnectionCounter:
    """Open connections, overall and per client address."""

    def __init__(self) -> None:
        self.total = 0
        self.by_address: dict[str, int] = {}

    def try_open(self, address: str, max_total: int, max_per_address: int) -> Reply | None:
        """Count one more connection; or say why not (and count nothing)."""
        if self.total >= max_total:
            return replies.TOO_MANY_CONNECTIONS
        if self.by_address.get(address, 0) >= max_per_address:
            return replies.TOO_MANY_FROM_ADDRESS
        self.total += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1
        return None

    def close(self, address: str) -> None:
        self.total -= 1
        left = self.by_address.get(address, 1) - 1
        if left > 0:
            self.by_address[address] = left
        else:
            self.by_address.pop(address, None)


class RateLimiter:
    """At most `limit` events per key in any minute (a sliding window of timestamps)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.events: dict[str, deque[float]] = {}
        self._since_sweep = 0

    def full(self, key: str, limit: int) -> bool:
        """Would one more event go over the limit? (0 means no limit.)"""
        if limit <= 0:
            return False
        return len(self._recent(key)) >= limit

    def take(self, key: str, limit: int) -> bool:
        """Count one event unless that goes over the limit; True when counted."""
        if limit <= 0:
            return True
        recent = self._recent(key)
        if len(recent) >= limit:
            return False
        recent.append(self.clock())
        self.events[key] = recent
        self._sweep()
        return True

    def _recent(self, key: str) -> deque[float]:
        recent = self.events.get(key) or deque()
        horizon = self.clock() - WINDOW
        while recent and recent[0] <= horizon:
            recent.popleft()
        if not recent:
            self.events.pop(key, None)
        return recent

    def _sweep(self) -> None:
        self._since_sweep += 1
        if self._since_sweep < 1000:
            return
        self._since_sweep = 0
        for key in list(self.events):
            self._recent(key)
