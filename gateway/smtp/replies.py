"""Every SMTP reply the gateway gives, by name: code, enhanced code (RFC 3463), text, and the
reason `/metrics` counts it under.

The reason travels with the reply, so rewording a reply never relabels a dashboard, and the
label of a reply is read here, not worked out again from its text. Replies with a part that
varies (a limit, a user, a queue id) are templates: `format` fills them in.

aiosmtpd answers protocol errors on its own, mostly without an enhanced code and sometimes with a
code an operator would not expect (its SIZE refusal); `from_aiosmtpd` gives them theirs at the
one place every reply passes through (the session's `push`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from gateway.errors import (
    BadContent,
    BadRecipient,
    LimitReached,
    NoRoute,
    Refusal,
    RelayDenied,
    TooManyTexts,
)


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str  # "" for the replies that carry none (220, 334, 354)
    text: str
    reason: str | None  # the smtp2pulse_smtp_refusals label; None: not a refusal
    # The reply line, made once: several replies go out for every message accepted.
    line: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "line",
            " ".join(part for part in (str(self.code), self.enhanced, self.text) if part),
        )

    def __str__(self) -> str:
        return self.line

    def format(self, **values: object) -> Reply:
        """The template with its {placeholders} filled in."""
        return dataclasses.replace(self, text=self.text.format(**values))


# --- transactions --------------------------------------------------------------------------
OK = Reply(250, "2.0.0", "OK", None)  # aiosmtpd's default, for a hook that gives none
SENDER_OK = Reply(250, "2.1.0", "Sender ok", None)
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient ok", None)
QUEUED = Reply(250, "2.0.0", "Ok: queued as {queue_id}", None)
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>", None)
NEED_RCPT = Reply(503, "5.5.1", "need RCPT command", "protocol_error")
DATA_SYNTAX = Reply(501, "5.5.4", "Syntax: DATA", "protocol_error")
TOO_MANY_RECIPIENTS = Reply(
    452, "4.5.3", "Too many recipients (at most {limit})", "too_many_recipients"
)
TOO_LARGE = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size", "too_large")
# What the texts of one message to all its recipients may cost the spool, when a template
# makes them differ per recipient (see gateway.spool.packing.SharedTexts): beyond that, this.
TOO_LARGE_FOR_RECIPIENTS = Reply(
    552,
    "5.3.4",
    "Message too large for so many recipients with texts of their own; send it to fewer at a time",
    "too_large",
)
BAD_RECIPIENT = Reply(553, "5.1.3", "{detail}", "bad_recipient")
RELAY_DENIED = Reply(550, "5.7.1", "{detail}", "denied")
# After DATA, for an address accepted at RCPT only because a route names it: what an unserved
# domain gets, once no route takes the message (counted apart, to tell a route's miss).
NO_ROUTE = Reply(550, "5.7.1", "{detail}", "no_route")
BAD_CONTENT = Reply(550, "5.6.0", "{detail}", "nothing_to_send")
# A domain's limit with over_limit refuse (config `limits`): at RCPT when the count already says
# so, else after DATA; nothing stored, and a temporary code, so the client tries again later.
LIMIT_REACHED = Reply(452, "4.2.2", "{detail}", "limit")
TRY_LATER = Reply(
    451, "4.3.0", "Temporary failure storing the message, try again later", "temporary_failure"
)
INTERNAL_ERROR = Reply(451, "4.3.0", "Internal error, try again later", "temporary_failure")

# --- bounces and automatic replies (smtp.null_sender, smtp.auto_submitted) ------------------
BOUNCE_REFUSED = Reply(
    550, "5.7.1", "Bounces (null sender) are not turned into messages here", "denied"
)
AUTO_REPLY_REFUSED = Reply(
    550, "5.7.1", "Automatic replies (Auto-Submitted) are not turned into messages here", "denied"
)
BOUNCE_DROPPED = Reply(250, "2.0.0", "Ok: bounce discarded, nothing sent", None)
AUTO_REPLY_DROPPED = Reply(250, "2.0.0", "Ok: automatic reply discarded, nothing sent", None)

# --- who may connect and send ----------------------------------------------------------------
NETWORK_REFUSED = Reply(554, "5.7.1", "Access denied: your network is not allowed here", "denied")
TOO_MANY_CONNECTIONS = Reply(
    421, "4.7.0", "Too many connections to this server, try again later", "too_many_connections"
)
TOO_MANY_FROM_ADDRESS = Reply(
    421, "4.7.0", "Too many connections from your address, try again later", "too_many_connections"
)
RATE_LIMITED = Reply(
    451,
    "4.7.1",
    "Too many messages from {who} (at most {limit} a minute), try again later",
    "rate_limited",
)
USER_MAY_NOT_SEND_TO = Reply(550, "5.7.1", "User {user} may not send to {domain}", "denied")
USER_MAY_NOT_USE_SENDER = Reply(
    550, "5.7.1", "User {user} may not use the sender name {name!r}", "denied"
)

# --- TLS and AUTH ----------------------------------------------------------------------------
TLS_UNAVAILABLE = Reply(
    454, "4.7.0", "TLS not available due to temporary reason", "too_many_connections"
)  # the label 4.7.0 always had
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required", "auth_required")
AUTH_UNAVAILABLE = Reply(502, "5.5.1", "AUTH not available", "protocol_error")
AUTH_NEEDS_TLS = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism", "protocol_error"
)
AUTH_IN_TRANSACTION = Reply(
    503, "5.5.1", "AUTH not permitted during a mail transaction", "protocol_error"
)
AUTH_ABORTED = Reply(501, "5.7.0", "Auth aborted", "auth_required")
AUTH_NOT_BASE64 = Reply(501, "5.5.2", "Can't decode base64", "protocol_error")
# RFC 4954 section 6 names this one.
AUTH_LINE_TOO_LONG = Reply(
    500, "5.5.6", "Authentication Exchange line is too long", "protocol_error"
)
AUTH_OK = Reply(235, "2.7.0", "Authentication successful", None)
BAD_CREDENTIALS = Reply(535, "5.7.8", "Authentication credentials invalid", "bad_credentials")
LOGIN_BLOCKED = Reply(
    421,
    "4.7.0",
    "Too many failed logins from your address, try again later",
    "too_many_connections",
)

# --- the session -----------------------------------------------------------------------------
LINE_TOO_LONG = Reply(500, "5.5.6", "Line too long", "protocol_error")
SESSION_TOO_LONG = Reply(
    421, "4.4.2", "Session time limit reached, closing connection", "temporary_other"
)
# RFC 5321 4.5.3.2: said before closing, so a stalled client's log tells its admin why.
TIMEOUT = Reply(421, "4.4.2", "{hostname} Timeout, closing connection", "temporary_other")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later", "shutting_down")

_FOR_REFUSAL: dict[type[Refusal], Reply] = {
    BadRecipient: BAD_RECIPIENT,
    RelayDenied: RELAY_DENIED,
    BadContent: BAD_CONTENT,
    NoRoute: NO_ROUTE,
    TooManyTexts: TOO_LARGE_FOR_RECIPIENTS,
    LimitReached: LIMIT_REACHED,
}


def reply_for(refusal: Refusal) -> Reply:
    """The named reply for a refusal raised after the SMTP stage (mapping, spool).

    A kind of refusal without its reply here is a bug: the KeyError reaches the handler's
    handle_exception, which answers 451, so the sender tries again rather than losing mail."""
    reply = _FOR_REFUSAL[type(refusal)]
    return reply.format(detail=refusal.detail) if "{detail}" in reply.text else reply


# --- what aiosmtpd says by itself ------------------------------------------------------------

_HAS_ENHANCED = re.compile(r"^(\d{3}) ([245]\.\d{1,3}\.\d{1,3})(?: (.*)|$)", re.DOTALL)
_REPLY = re.compile(r"^(\d{3}) (.*)$", re.DOTALL)
# Exact texts first: these need a code other than their class's default.
_KNOWN = {
    "552 Error: message size exceeds fixed maximum message size": TOO_LARGE,
    "552 Error: Too much mail data": TOO_LARGE,
    # The line limit is never below the size limit (see GatewaySession), so a line too long
    # always means a message too large.
    "500 Line too long (see RFC5321 4.5.3.1.6)": TOO_LARGE,
    "500 Command line too long": Reply(500, "5.5.6", "Command line too long", "protocol_error"),
    "530 Must issue a STARTTLS command first": Reply(
        530, "5.7.0", "Must issue a STARTTLS command first", "auth_required"
    ),
    "554 Command refused due to lack of security": Reply(
        554, "5.7.0", "Command refused: TLS handshake failed", "auth_required"
    ),
    "553 5.1.3 Error: malformed address": Reply(553, "5.1.3", "Malformed address", "bad_recipient"),
}
# By reply code, the enhanced code for anything else aiosmtpd says.
_BY_CODE = {
    "250": "2.0.0",
    "221": "2.0.0",
    "235": "2.7.0",
    "252": "2.5.0",
    "421": "4.3.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "538": "5.7.11",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}
# aiosmtpd's refusals by enhanced code: the labels its replies had before they were named.
_REASONS = {
    "5.7.1": "denied",
    "5.1.3": "bad_recipient",
    "4.5.3": "too_many_recipients",
    "5.3.4": "too_large",
    "5.6.0": "nothing_to_send",
    "4.3.0": "temporary_failure",
    "4.3.2": "shutting_down",
    "5.7.0": "auth_required",
    "5.7.8": "bad_credentials",
    "4.7.0": "too_many_connections",
    "4.7.1": "rate_limited",
    "4.2.2": "limit",
}


def from_aiosmtpd(status: str) -> Reply | None:
    """One of aiosmtpd's own single-line replies as a Reply with an enhanced code; None for
    those that carry none (220, 334, 354 and the like) and for multi-line ones."""
    known = _KNOWN.get(status)
    if known is not None:
        return known
    match = _HAS_ENHANCED.match(status)
    if match:
        code, enhanced, text = match.groups()
    else:
        match = _REPLY.match(status)
        if not match or match.group(1) not in _BY_CODE:
            return None
        code, text = match.groups()
        enhanced = _BY_CODE[code]
        text = text.removeprefix("Error: ")
    reason = (
        None
        if code[0] in "23"
        else _REASONS.get(enhanced, "protocol_error" if code[0] == "5" else "temporary_other")
    )
    return Reply(int(code), enhanced, text or "", reason)
