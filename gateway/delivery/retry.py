"""What one attempt makes of a delivery: sent, refused, unknown, failed for good, or due
again later, and when.

Pure functions of the outcome, the running config and the clock, so the retry policy reads in
one place and the worker only applies it.
"""

from __future__ import annotations

from dataclasses import replace

from gateway.config.model import Config
from gateway.delivery.request import Outcome
from gateway.spool.rows import Delivery, Result
from gateway.spool.states import State

NUL_SHOWN = "\ufffd"
RETRY_AFTER_FLOOR = 3600.0  # the least a Retry-After is honoured up to, whatever the schedule


def next_wait(schedule: tuple[float, ...], attempts_done: int, jitter: float) -> float:
    """The wait after the n-th failed attempt: the schedule's n-th step (the last repeats), times
    `jitter` (0.9 to 1.1, drawn once per request: a batch that failed together is due together,
    and goes again as one batch rather than as many small ones)."""
    base = schedule[min(attempts_done, len(schedule)) - 1]
    return base * jitter


def next_state(
    delivery: Delivery, outcome: Outcome, config: Config, now: float, jitter: float
) -> Result:
    """Turn an attempt's outcome into the delivery's next state."""
    if "\x00" in outcome.detail or "\x00" in (outcome.platform_id or ""):
        # The platform's words are stored as text, and PostgreSQL's text cannot hold NUL: a
        # reply with one ({"msg": "\u0000"}) could never be recorded, and its delivery would
        # be held (or, its lease run out, sent again) for ever.
        outcome = replace(
            outcome,
            detail=outcome.detail.replace("\x00", NUL_SHOWN),
            platform_id=outcome.platform_id and outcome.platform_id.replace("\x00", NUL_SHOWN),
        )
    bounce = config.bounces.enabled
    if outcome.kind == "sent":
        return Result(
            delivery.id, State.SENT, now, "sent", outcome.platform_id or "", outcome.platform_id
        )
    if outcome.kind == "unknown":
        # Perhaps sent: never again on its own (a duplicate), never counted as sent (a loss).
        return Result(
            delivery.id, State.UNCONFIRMED, now, "unknown", f"unknown outcome: {outcome.detail}"
        )
    if outcome.kind == "refused":
        return Result(delivery.id, State.REFUSED, now, "refused", outcome.detail, bounce=bounce)
    if now - delivery.received_at >= config.spool.give_up_after:
        return Result(
            delivery.id,
            State.FAILED,
            now,
            "failed",
            f"gave up after {delivery.attempts + 1} attempts: {outcome.detail}",
            bounce=bounce,
        )
    wait = next_wait(config.spool.retry, delivery.attempts + 1, jitter)
    if outcome.retry_after is not None:
        # Honoured up to the schedule's longest wait (an hour at least, so a platform asking
        # for an hour of quiet gets it from a short schedule too): `Retry-After: 99999999999`
        # would park the delivery for millennia, never given up on nor bounced.
        cap = max(max(config.spool.retry), RETRY_AFTER_FLOOR)
        wait = max(wait, min(outcome.retry_after, cap))
    # The last attempt comes at the give-up deadline, not after it.
    wait = max(0.0, min(wait, delivery.received_at + config.spool.give_up_after - now))
    return Result(
        delivery.id,
        State.QUEUED,
        now + wait,
        "deferred",
        f"{outcome.detail}; next attempt in {wait:.0f}s",
    )
