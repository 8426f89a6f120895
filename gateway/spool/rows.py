"""What goes into the spool and what comes out of it: frozen dataclasses, the same whichever
database holds them."""

from __future__ import annotations

import json
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
class DayLimits:
    """A domain's `limits` as the spool counts them (gateway.spool.budget) on one calendar day
    of the domain's time zone: the message layer works out the day, the spool only counts."""

    domain: str
    day: str  # the domain's calendar day, YYYY-MM-DD
    day_ends: float  # its next local midnight, epoch seconds
    per_recipient: tuple[int, float] | None = None  # (messages, window seconds)
    messages_per_day: int | None = None
    parts_per_day: int | None = None
    over_limit: str = "hold"  # hold | drop | refuse
    notify: bool = False  # a notice is owed when a limit first trips in the day


@dataclass(frozen=True, slots=True)
class Spend:
    """What one delivery costs its domain's limits."""

    limits: DayLimits
    recipient: str  # who per_recipient counts: the sent_to
    parts: int  # SMS parts; 0 for a type that is no SMS

    def text(self) -> str:
        """As a held delivery keeps it (its `spend` column), to be counted when released."""
        return json.dumps([self.limits.domain, self.recipient, self.parts])


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What the accept commit tells a retransmission and a repeat by (spool/repeats.py), as
    gateway/message/fingerprint.py makes it from the mail."""

    # Message-ID, envelope sender, recipient and content, hashed; None without a Message-ID.
    retransmission: str | None = None
    # The domain, sent_to and sent_text, hashed; None when the domain has no repeat_window.
    text: str | None = None
    window: float = 0.0  # the domain's repeat_window, seconds


@dataclass(frozen=True, slots=True)
class NewDelivery:
    recipient: str
    request: Mapping[str, str]
    # Stored in state `suppressed` with this as its last_error: never leased, never sent.
    suppressed: Suppressed | None = None
    # One event (kind, detail) kept with the delivery from the start, e.g. the route it took.
    event: tuple[str, str] | None = None
    # What it costs its domain's limits; None: exempt (no limits, or a limit's own notice).
    spend: Spend | None = None
    # Over a limit with over_limit hold (set by the spool's budget): until when, and why.
    held: tuple[float, str] | None = None
    fingerprint: Fingerprint | None = None

    def initial_state(self) -> tuple[State, str | None]:
        """The state and last_error it is stored with: queued, suppressed with its reason, or
        held for a limit's window."""
        if self.suppressed is not None:
            return State.SUPPRESSED, str(self.suppressed)
        if self.held is not None:
            return State.HELD, self.held[1]
        return State.QUEUED, None

    def stored(self, now: float) -> tuple[State, str | None, float, str | None]:
        """State, last_error, next_attempt_at and spend as the row is inserted."""
        state, error = self.initial_state()
        if self.held is None or self.spend is None:
            return state, error, now, None
        return state, error, self.held[0], self.spend.text()


@dataclass(frozen=True, slots=True)
class Picture:
    """What a message's picture is (domains.NAME.images; gateway.spool.media): re-encoded, or
    refused with its reason. `queue show` tells of it; NewPicture carries its bytes."""

    content_type: str  # image/jpeg or image/png; "" when refused
    width: int
    height: int
    size: int  # bytes of the picture sent
    source: str  # the part's file name (or type) and size, as it came
    source_size: int
    problem: str | None  # why none is sent: not a picture, broken, a bomb, too large


@dataclass(frozen=True, slots=True)
class NewPicture:
    """A picture to store with its message: b"" for one refused."""

    about: Picture
    data: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    mail_from: str
    peer: str
    helo: str
    raw: bytes
    deliveries: tuple[NewDelivery, ...]
    auth_user: str | None = None
    picture: NewPicture | None = None  # stored with it, in the same commit
    subject: str = ""  # decoded, for the console's listing and search


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message as a group commit stores it, with its queue id and arrival time."""

    queue_id: str
    now: float
    message: IncomingMessage


class Accepted(str):
    """A queue id as `accept` gives it, with what the commit decided besides storing (a str, so
    whoever wants only the id has it). `stored` is False when every delivery was a
    retransmission: nothing was stored, and the id is the first message's."""

    stored: bool
    retransmitted: tuple[tuple[str, str], ...]  # (recipient, first queue id), not stored again
    # (recipient, why) suppressed by the commit itself: a repeat, a limit's drop
    suppressed: tuple[tuple[str, Suppressed], ...]

    def __new__(
        cls,
        queue_id: str,
        *,
        stored: bool = True,
        retransmitted: tuple[tuple[str, str], ...] = (),
        suppressed: tuple[tuple[str, Suppressed], ...] = (),
    ) -> Accepted:
        accepted = super().__new__(cls, queue_id)
        accepted.stored = stored
        accepted.retransmitted = retransmitted
        accepted.suppressed = suppressed
        return accepted

    def also_suppressed(self, more: tuple[tuple[str, Suppressed], ...]) -> Accepted:
        return Accepted(
            self,
            stored=self.stored,
            retransmitted=self.retransmitted,
            suppressed=self.suppressed + more,
        )


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
    picture: Picture | None = None  # without its bytes


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
