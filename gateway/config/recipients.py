"""Recipients, in one place: who an envelope recipient reaches, and how that reads to a person.

A served domain turns a `RCPT TO` local part into the platform's `sent_to` (a phone number, an
e-mail address, or an id), or an alias into the `sent_to` of each of its group. Resolved once,
at RCPT: a group of N counts as N against `smtp.max_recipients`, and each member is a delivery of
its own (the same person twice in one envelope still gets one message, see
gateway.message.prepare).

Here, at the bottom of the layers, because the config needs it too: every alias target is checked
at load exactly as a local part is checked at RCPT, and every stage above reads the `Recipient`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Protocol

from gateway.config.model import DomainConfig, Recipient
from gateway.errors import BadRecipient, RelayDenied

__all__ = ["Recipient", "ServedDomains", "resolve_recipients", "shown_recipient"]

# A phone local part: optional leading "+", then digits with "-" or "." between them. Anything
# else (parentheses, quotes, spaces, a "+" in the middle) is refused rather than guessed at.
# Every regex here sees client input, so each must match in linear time: a run of separators
# is mandatory between two digit groups, otherwise the groups nest and a long run of digits
# followed by one bad character backtracks exponentially.
_PHONE = re.compile(r"^\+?[0-9]+(?:[.-]+[0-9]+)*$")
EMAIL_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_EMAIL_DOMAIN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_VERBATIM = re.compile(r"^[^\s\"(),:;<>@\[\\\]]+$")


class ServedDomains(Protocol):
    """What resolving needs of a config: its served domains (a Config is one)."""

    def domain(self, name: str) -> DomainConfig | None: ...


def resolve_recipients(address: str, config: ServedDomains) -> tuple[Recipient, ...]:
    """The people `address` names: one, or each member of an alias's group; raises BadRecipient
    or RelayDenied (gateway.errors) for an address the gateway will not take."""
    local, at, domain_name = address.rpartition("@")
    if not at or not local or not domain_name:
        raise BadRecipient(f"<{address}>: not a valid address")
    domain = config.domain(domain_name)
    if domain is None:
        raise RelayDenied(
            f"<{address}>: relay access denied, domain {domain_name.lower()} is not served here"
        )
    targets = domain.aliases.get(local.lower()) if domain.aliases else None
    if targets is not None:
        return tuple(Recipient(address, domain.name, sent_to) for sent_to in targets)
    try:
        return (Recipient(address, domain.name, recipient_value(local, domain)),)
    except BadRecipient as exc:
        if domain.aliases:
            raise BadRecipient(f"{exc} and not an alias of {domain.name}") from None
        raise


def shown_recipient(address: str, sent_to: str | None) -> str:
    """How a recipient reads to a person (queue, status page): as sent, and as written in RCPT TO
    when that differs."""
    if not sent_to or sent_to.lower() in (address.lower(), address.split("@")[0].lower()):
        return address
    return f"{sent_to} ({address})"


def recipient_value(local: str, domain: DomainConfig) -> str:
    if domain.recipient == "phone":
        return phone_number(local, domain)
    if domain.recipient == "email":
        return email_address(local)
    if not _VERBATIM.match(local):
        raise BadRecipient(f"{local!r} is not a valid recipient id")
    if not local.isascii():
        # Invisible (U+200B) and direction-changing (U+202E) characters make an id that looks
        # like another one in every log, list and reply: refused, never sent on.
        for ch in local:
            if unicodedata.category(ch) in ("Cf", "Cc"):
                raise BadRecipient(
                    f"{local.encode('ascii', 'backslashreplace').decode()!r} "
                    f"holds an invisible or control character "
                    f"(U+{ord(ch):04X})"
                )
    return local


def phone_number(local: str, domain: DomainConfig) -> str:
    if not _PHONE.match(local):
        raise BadRecipient(
            f"{local!r} is not a phone number (digits, optional leading +, separators - and . only)"
        )
    international = local.startswith("+")
    digits = re.sub(r"[^0-9]", "", local)
    if not international:
        # National formats ("8 900 ..." in Russia) are rewritten only when the sender did not
        # already write the number in international form.
        for rule in domain.rewrite:
            rewritten = rule.match.sub(rule.replace, digits, count=1)
            if rewritten != digits:
                digits = rewritten
                break
    if not digits.isdigit() or not 10 <= len(digits) <= 15:
        raise BadRecipient(
            f"{local!r} is not a phone number in international format (10 to 15 digits)"
        )
    return digits


def email_address(local: str) -> str:
    user, eq, host = local.rpartition("=")
    if not eq or not user or not EMAIL_LOCAL.match(user) or not _EMAIL_DOMAIN.match(host):
        raise BadRecipient(f"{local!r} is not user=example.com")
    return f"{user}@{host.lower()}"
