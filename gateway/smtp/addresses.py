"""MAIL and RCPT addresses before aiosmtpd's parser sees them (session.py's `_getaddr`).

The common case needs no RFC 5322 parser (aiosmtpd's builds a class on every call, a cost a
busy gateway measured); what that parser would silently change or what nobody could store is
refused here instead.
"""

from __future__ import annotations

import re

_SIMPLE_ADDRESS = re.compile(
    r"\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>"
    r"((?:\s.*)?)",
    re.DOTALL,
)

Parsed = tuple[str | None, str | None]  # (address, the rest of the argument), as aiosmtpd's
MALFORMED: Parsed = (None, None)


def precheck(arg: str) -> Parsed | None:
    """The address and the rest of `arg`, MALFORMED for one to refuse, or None when only
    aiosmtpd's full parser can tell."""
    simple = _SIMPLE_ADDRESS.fullmatch(arg)
    if simple:
        return simple.group(1), simple.group(2).lstrip()
    # The address parser drops (comments) silently, so "<7(900)1234567@sms.local>" would
    # become other digits than the sender wrote. Refuse instead of guessing.
    address_part = arg.split(">", 1)[0] if arg.lstrip().startswith("<") else arg
    if "(" in address_part or ")" in address_part:
        return MALFORMED
    # Bytes that are not UTF-8 (aiosmtpd keeps them as lone surrogates) or control characters
    # make an address nobody can store, log or answer to: a malformed one.
    if any(ch < " " or "\udc80" <= ch <= "\udcff" for ch in arg):
        return MALFORMED
    return None
