"""The words the spool stores for where a delivery is: its state, its platform status, its DSN.

StrEnums whose values are exactly the strings in existing spool files, so a file written by any
earlier release reads unchanged, and a member compares equal to the text it stands for.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class State(StrEnum):
    """A delivery's own state: where it is in our hands."""

    QUEUED = "queued"  # due at next_attempt_at
    SENDING = "sending"  # leased to a worker until next_attempt_at
    SENT = "sent"  # the platform took it
    REFUSED = "refused"  # the platform said never
    FAILED = "failed"  # given up on
    # A batch's reply said neither yes nor no (the contract's "unknown" outcome): perhaps
    # sent, so never sent again on its own; a callback, `queue retry` or `queue drop` settles it.
    UNCONFIRMED = "unconfirmed"
    # Accepted and kept with its reason (last_error), but never sent: a route's `drop`, a
    # repeat inside a repeat window, a limit's `drop`. Never leased; purged as finished ones are.
    SUPPRESSED = "suppressed"
    # Accepted, over a limit with over_limit hold (last_error says which and until when): due
    # at next_attempt_at to be looked at again (gateway.spool.budget), never leased as it is.
    HELD = "held"


# What the lease takes: due deliveries, and leases that ran out.
LEASABLE = (State.QUEUED, State.SENDING)
# What a platform callback makes sent: a delivery it reports on is one it has, even while our
# request is still waiting for its reply (`sending`) or after that reply was lost (`queued` for a
# retry, `unconfirmed`).
TAKEN_BY_CALLBACK = (State.QUEUED, State.SENDING, State.UNCONFIRMED)
# Deliveries not settled yet: `queue list` shows them, purging keeps them.
UNFINISHED = (State.QUEUED, State.SENDING, State.UNCONFIRMED)
# What an operator's retry makes due again (a `sending` one is already being tried).
RETRYABLE = (State.QUEUED, State.FAILED, State.REFUSED, State.UNCONFIRMED)


class StatusClass(StrEnum):
    """What the platform's last status (kept verbatim beside it) means for the recipient."""

    DELIVERED = "delivered"
    FAILED = "failed"
    PENDING = "pending"
    UNKNOWN = "unknown"


class BounceState(StrEnum):
    """The delivery status notification owed to the envelope sender."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


# What `queue list --state` and the status page call a delivery: its State, except that a sent
# one is delivered, failed or unknown once the platform's status says so.
SHOWN = (
    State.QUEUED,
    State.SENDING,
    State.SENT,
    StatusClass.DELIVERED,
    StatusClass.FAILED,
    State.REFUSED,
    StatusClass.UNKNOWN,
    State.UNCONFIRMED,
    State.SUPPRESSED,
    State.HELD,
)


# What became of one platform callback.
CallbackResult = Literal["recorded", "repeated", "unknown", "ignored"]
