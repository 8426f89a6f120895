"""An envelope recipient as the people it reaches: one, or each member of an alias's group.

Resolved once, at RCPT: a group of N counts as N against `smtp.max_recipients`, and each member
is a delivery of its own (the same number reached twice in one envelope still gets one message,
see gateway.message.prepare).
"""

from __future__ import annotations

from gateway.config.model import Config
from gateway.errors import BadRecipient
from gateway.message.mapping import Recipient, resolve_recipient


def resolve_recipients(address: str, config: Config) -> tuple[Recipient, ...]:
    """The recipients `address` names; raises a Refusal as resolve_recipient does."""
    local, at, domain_name = address.rpartition("@")
    domain = config.domain(domain_name) if at and local else None
    if domain is None or not domain.aliases:
        return (resolve_recipient(address, config),)
    targets = domain.aliases.get(local.lower())
    if targets is not None:
        return tuple(Recipient(address, domain.name, sent_to) for sent_to in targets)
    try:
        return (resolve_recipient(address, config),)
    except BadRecipient as exc:
        raise BadRecipient(f"{exc} and not an alias of {domain.name}") from None
