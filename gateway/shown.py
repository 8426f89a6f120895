"""How the spool's deliveries and messages read to a person: the state a delivery is shown in,
the platform's last word, a message's history as lines. Read by both fronts, `queue list/show`
and the status page, so both say the same thing; `--json` gives the same with ISO 8601 times.
Above the spool, whose rows it reads, and below both fronts."""

from __future__ import annotations

import dataclasses
from typing import Any

from gateway.config.recipients import shown_recipient
from gateway.spool.rows import DeliveryDetail, DeliveryLine, MessageDetail, Picture
from gateway.spool.states import State, StatusClass
from gateway.times import iso_time, local_time

_LONG_FIELDS = ("sent_text", "html_text")


def platform_note(line: DeliveryLine) -> str:
    """The platform's last word on a delivery: its status, else the last error."""
    if line.status:
        return f"status {line.status}"
    return line.last_error or ""


def line_text(line: DeliveryLine) -> str:
    attempts = f"{line.attempts} attempt" + ("" if line.attempts == 1 else "s")
    note = platform_note(line)
    return (
        f"{line.queue_id}  {local_time(line.received_at)}  "
        f"{shown_recipient(line.recipient, line.sent_to)}  {line.state}  {attempts}"
        + (f"  {note}" if note else "")
    )


def line_json(line: DeliveryLine) -> dict[str, Any]:
    data = dataclasses.asdict(line)
    data["received_at"] = iso_time(line.received_at)
    data["updated_at"] = iso_time(line.updated_at)
    return data


# A sent delivery is shown as what the platform's status says became of it, once it says so (the
# states of gateway.spool.states.SHOWN).
_SETTLED_BY_STATUS = (StatusClass.DELIVERED, StatusClass.FAILED, StatusClass.UNKNOWN)


def shown_state(delivery: DeliveryDetail) -> str:
    if delivery.state == State.SENT and delivery.status_class in _SETTLED_BY_STATUS:
        return delivery.status_class
    return delivery.state


def next_attempt(delivery: DeliveryDetail) -> float | None:
    """When the delivery is tried next; None for one that is not waiting for an attempt."""
    if delivery.state in (State.QUEUED, State.SENDING):
        return delivery.next_attempt_at
    return None


def detail_lines(detail: MessageDetail) -> list[str]:
    """`queue show`: the message, then each delivery with its events one a line."""
    lines = [
        f"message {detail.queue_id}",
        f"  received  {local_time(detail.received_at)} from <{detail.mail_from}>",
        f"  client    {detail.peer} (HELO {detail.helo or '-'}), {detail.size} bytes",
    ]
    if detail.picture is not None:
        lines.append(f"  picture   {picture_text(detail.picture)}")
    for d in detail.deliveries:
        to = shown_recipient(d.recipient, d.request.get("sent_to"))
        lines += [
            "",
            f"delivery {d.id} to {to}: {shown_state(d)}",
            f"  attempts  {d.attempts}"
            + (f", next {local_time(d.next_attempt_at)}" if next_attempt(d) is not None else ""),
        ]
        if d.platform_id:
            lines.append(f"  platform  id {d.platform_id}")
        if d.status:
            lines.append(f"  status    {d.status} ({d.status_class}) at {local_time(d.status_at)}")
        if d.last_error:  # a suppressed delivery's last_error is why it is kept, not sent
            label = "reason" if d.state == State.SUPPRESSED else "error"
            lines.append(f"  {label:<9} {d.last_error}")
        if d.bounce:
            lines.append(f"  bounce    {d.bounce}")
        short = {k: v for k, v in d.request.items() if k not in _LONG_FIELDS}
        lines.append("  request   " + " ".join(f"{k}={v!r}" for k, v in short.items()))
        lines += [
            f"  {key:<9} {_cut(d.request[key])!r}" for key in _LONG_FIELDS if key in d.request
        ]
        lines += [
            f"  {local_time(at)}  {kind}" + (f"  {text}" if text else "")
            for at, kind, text in d.events
        ]
    return lines


def picture_text(picture: Picture) -> str:
    """A message's picture (domains.NAME.images) in a line: what is sent, or why nothing is."""
    if picture.problem is not None:
        return f"not sent: {picture.problem} ({picture.source})"
    return (
        f"{picture.content_type} {picture.width}x{picture.height}, {picture.size} bytes"
        f" (from {picture.source})"
    )


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def detail_json(detail: MessageDetail) -> dict[str, Any]:
    data = dataclasses.asdict(detail)
    data["received_at"] = iso_time(detail.received_at)
    for shown, d in zip(data["deliveries"], detail.deliveries, strict=True):
        shown["shown_state"] = shown_state(d)
        for key in ("next_attempt_at", "status_at"):
            shown[key] = iso_time(shown[key])
        shown["events"] = [
            {"at": iso_time(at), "kind": kind, "detail": text} for at, kind, text in d.events
        ]
    return data
