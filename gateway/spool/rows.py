"""What goes into the spool and what comes out of it: frozen dataclasses, the same whichever
database holds them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.spool.states import BounceState, State, StatusClass


@dataclass(frozen=True, slots=True)
class Suppressed:
    """Why an accepted delivery is kept but never sent (a route's `drop`; a repeat or a limit)."""

    reason: str  # route | repeat | limit: the label smtp2pulse_suppressed_total counts by
    detail: str  # for people: which route, which earlier message, which limit

    def __str__(self) -> str:
        return f"{self.reason} {self.detail}".rstrip()


@dataclass(frozen=True, slots=True)
class NewDelivery:
    recipient: str
    request: Mapping[str, str]
    # Stored in state `suppressed` with this as its last_error: never leased, never sent.
    suppressed: Suppressed | None = None
    # One event (kind, detail) kept with the delivery from the start, e.g. the route it took.
    event: tuple[str, str] | None = None

    def initial_state(self) -> tuple[State, str | None]:
        """The state and last_error it is stored with: queued, or suppressed with its reason."""
        if self.suppressed is None:
            return State.QUEUED, None
        return State.SUPPRESSED, str(self.suppressed)


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    mail_from: str
    peer: str
    helo: str
    raw: bytes
    deliveries: tuple[NewDelivery, ...]
    auth_user: str | None = None
    subject: str = ""  # decoded, for the console's listing and search


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    queue_id: str
    recipient: str
    request: Mapping[str, str]
    attempts: int
    received_at: float
    auth_user: str | None


@dataclass(frozen=True, slots=True)
class Result:
    """What one attempt changed: the new state and when, if ever, to try again."""

    delivery_id: int
    state: State
    next_attempt_at: float
    event: str
    detail: str = ""
    platform_id: str | None = None
    bounce: bool = False  # a final failure the envelope sender is to be told of


@dataclass(frozen=True, slots=True)
class PendingBounce:
    """A failed delivery whose sender is still to be told, with the mail it was about."""

    delivery_id: int
    queue_id: str
    mail_from: str
    recipient: str
    received_at: float
    state: State  # refused | failed | sent (a failed status by callback)
    reason: str  # the last error, or the platform's status for a sent one
    raw: bytes


@dataclass(frozen=True, slots=True)
class SpoolStats:
    by_state: dict[str, int]
    oldest_pending_age: float


@dataclass(frozen=True, slots=True)
class DeliveryDetail:
    id: int
    recipient: str
    state: State
    attempts: int
    next_attempt_at: float
    platform_id: str | None
    last_error: str | None
    request: dict[str, str]
    status: str | None = None  # the platform's last delivery status, verbatim
    status_class: StatusClass | None = None
    status_at: float | None = None
    bounce: BounceState | None = None  # the DSN to the sender
    events: list[tuple[float, str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MessageDetail:
    queue_id: str
    received_at: float
    mail_from: str
    peer: str
    helo: str
    size: int
    deliveries: list[DeliveryDetail]


@dataclass(frozen=True, slots=True)
class DeliveryLine:
    """One delivery as `queue list` and the status page show it."""

    queue_id: str
    delivery_id: int
    received_at: float
    recipient: str  # as written in RCPT TO
    sent_to: str | None  # as sent to the platform
    state: str  # one of states.SHOWN
    attempts: int
    last_error: str | None
    status: str | None  # the platform's last status, verbatim
    updated_at: float


@dataclass(frozen=True, slots=True)
class Search:
    to: str | None = None  # a recipient as written or as sent
    since: float | None = None  # received at or after (epoch seconds)
    state: str | None = None  # one of states.SHOWN
    queue_id: str | None = None
    pending_only: bool = False
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class Overview:
    by_state: dict[str, int]  # by shown state
    oldest_waiting: DeliveryLine | None
    sent_last_hour: int
    recent_errors: list[DeliveryLine]
