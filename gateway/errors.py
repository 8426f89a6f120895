"""One exception tree for the whole gateway.

A `Refusal` says which kind of refusal it is (its class) and why (its detail); the SMTP front
maps each kind to its named reply, so the code that decides to refuse needs no reply code.
Everything else that reaches the handler unexpectedly becomes `451 4.3.0` there and nowhere
else.

    GatewayError
    ├── ConfigError            a config file's mistakes, one line each, naming its key
    ├── Refusal                mail or a recipient not taken (each a named SMTP reply)
    │   ├── BadRecipient
    │   ├── RelayDenied
    │   ├── NoRoute
    │   ├── BadContent
    │   ├── TooManyTexts
    │   └── LimitReached       a domain's limit with over_limit refuse (452 4.2.2)
    ├── SpoolError             the spool could not store or update something
    │   └── SpoolLocked        another smtp2pulse holds the spool
    ├── ShuttingDown
    └── SenderProcessError
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid; `problems` holds one line per mistake, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class Refusal(GatewayError):
    """Mail or a recipient the gateway will not take; `detail` says why, for the reply.

    Each kind is a subclass; the SMTP front turns it into its named reply
    (gateway.smtp.replies.reply_for), so stages after SMTP never know a reply code."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRecipient(Refusal):
    """An envelope recipient that is no valid address, phone number or id for its domain."""


class RelayDenied(Refusal):
    """A recipient in a domain the gateway does not serve."""


class NoRoute(Refusal):
    """Mail for an address only `routes` name (its domain is not served) that no route takes."""


class BadContent(Refusal):
    """A message that makes no request: nothing to send, or a bad X-Pulse-* value."""


class TooManyTexts(Refusal):
    """The per-recipient texts of one message would cost the spool more than it takes."""

    def __init__(self) -> None:
        super().__init__("too large for so many recipients with texts of their own")


class LimitReached(Refusal):
    """A domain's `limits` say no more now and its over_limit is refuse: a temporary refusal,
    so that the client tries again later (nothing is stored)."""


class SpoolError(GatewayError):
    """The spool could not store or update something; nothing was promised."""


class SpoolLocked(SpoolError):
    """Another smtp2pulse holds the spool's lock: two daemons on one spool would send twice."""


class ShuttingDown(GatewayError):
    """The component is stopping and takes no new work."""


class SenderProcessError(GatewayError):
    """The process that sends requests to the platform could not be started."""
