"""Enhanced status codes (RFC 3463) for the replies aiosmtpd writes by itself.

aiosmtpd answers protocol errors on its own, mostly without an enhanced code and sometimes with a
code an operator would not expect (its SIZE refusal). Rewriting them at the one place every reply
passes through keeps every refusal precise without re-implementing the protocol.
"""

from __future__ import annotations

import re

_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
_REPLY = re.compile(r"^(\d{3})([ -])(.*)$", re.DOTALL)

# Exact texts first: these need a code other than their class's default.
_KNOWN = {
    "552 Error: message size exceeds fixed maximum message size":
        "552 5.3.4 Message size exceeds fixed maximum message size",
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds fixed maximum message size",
    # The line limit is never below the size limit (see GatewaySMTP), so a line too long
    # always means a message too large.
    "500 Line too long (see RFC5321 4.5.3.1.6)":
        "552 5.3.4 Message size exceeds fixed maximum message size",
    "500 Command line too long": "500 5.5.6 Command line too long",
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
    "554 Command refused due to lack of security":
        "554 5.7.0 Command refused: TLS handshake failed",
    "553 5.1.3 Error: malformed address": "553 5.1.3 Malformed address",
}
# By reply code, the enhanced code for anything else aiosmtpd says.
_BY_CODE = {
    "250": "2.0.0", "221": "2.0.0", "235": "2.7.0", "252": "2.5.0",
    "421": "4.3.0", "451": "4.3.0", "452": "4.3.1", "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "535": "5.7.8", "538": "5.7.11", "550": "5.0.0", "552": "5.3.4",
    "553": "5.1.3", "554": "5.0.0", "555": "5.5.4",
}


def with_enhanced_code(reply: str) -> str:
    """The reply with an enhanced status code; replies that have one pass unchanged."""
    if reply in _KNOWN:
        return _KNOWN[reply]
    if _HAS_ENHANCED.match(reply):
        return reply
    match = _REPLY.match(reply)
    if not match:
        return reply
    code, separator, text = match.groups()
    enhanced = _BY_CODE.get(code)
    if enhanced is None:   # 220, 334, 354 and the like carry no enhanced code
        return reply
    if text.startswith("Error: "):
        text = text[len("Error: "):]
    return f"{code}{separator}{enhanced} {text}"


# Refusals of the session itself (issue 11), named so that tests and logs agree on them.
REPLY_NETWORK_REFUSED = "554 5.7.1 Access denied: your network is not allowed here"
REPLY_AUTH_IN_TRANSACTION = "503 5.5.1 AUTH not permitted during a mail transaction"
# RFC 4954 section 6 names this one.
REPLY_AUTH_LINE_TOO_LONG = "500 5.5.6 Authentication Exchange line is too long"
REPLY_LINE_TOO_LONG = "500 5.5.6 Line too long"
REPLY_SESSION_TOO_LONG = "421 4.4.2 Session time limit reached, closing connection"

# What the texts of one message to all its recipients may cost the spool, when a template
# makes them differ per recipient (see gateway.spool.SharedTexts): beyond that, "too large".
REPLY_TOO_LARGE_FOR_RECIPIENTS = ("552 5.3.4 Message too large for so many recipients with "
                                  "texts of their own; send it to fewer at a time")
