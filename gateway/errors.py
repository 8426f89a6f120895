"""One exception tree for the whole gateway.

A `Refusal` carries the SMTP reply it stands for, so the code that decides to refuse also decides
how; the SMTP handler only formats it. Everything else that reaches the handler unexpectedly
becomes `451 4.3.0` there and nowhere else.
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
    """A message or recipient the gateway will not take, with the SMTP reply that says why."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text

    @property
    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


class SpoolError(GatewayError):
    """The spool could not store or update something; nothing was promised."""


class ShuttingDown(GatewayError):
    """The component is stopping and takes no new work."""


class SenderProcessError(GatewayError):
    """The process that sends requests to the platform could not be started."""
