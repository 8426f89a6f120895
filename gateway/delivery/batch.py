"""send-list-messages: many deliveries in one request, and what its undocumented reply means.

The platform takes `token`, `type`, `sender` and `charset` once per request and the rest of each
message in a JSON list, `messages` (../shared/reference/pulse-http-api.md). So only deliveries
that agree on those four can share a request (`group`); each keeps its own fields, its signed
callback among them, so statuses come back per message as for single sends.

The reply is not documented. What is read (the contract, Durability):

- a JSON list of send-message-style objects, one per message in order: each settles its own;
- `{"type": "success"}` or `{"type": "error", "msg": ...}`: all of them alike;
- HTTP 429 or 5xx, and (in the client) no reply at all: every one is tried again;
- anything else, a 200 with HTML, a list of the wrong length, a 404: **unknown**. The platform
  may have taken them; sending again could send each twice, counting them sent could lose them.
  They wait, unconfirmed, for a callback, `queue retry` or `queue drop`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from urllib.parse import quote_plus

from gateway.delivery.request import (
    Outcome,
    Outgoing,
    codec_for,
    form_value,
    json_reply,
    overloaded,
    refused,
    unrecognised,
)

# Once per request, not per message: what every message of a batch must share.
BATCH_FIELDS = ("type", "sender", "charset")

BatchKey = tuple[str, str | None, str | None, str | None]


def batch_key(outgoing: Outgoing) -> BatchKey:
    """What two deliveries must share to go in one request (an absent field is its own value:
    a sender set for one and left to the platform's default for another stay apart)."""
    fields = outgoing.fields
    return (outgoing.token, fields.get("type"), fields.get("sender"), fields.get("charset"))


def group(outgoing: Sequence[Outgoing], size: int) -> list[list[Outgoing]]:
    """Batches of at most `size` that share a key, in the order the first of each came."""
    open_batch: dict[BatchKey, list[Outgoing]] = {}
    batches: list[list[Outgoing]] = []
    for item in outgoing:
        key = batch_key(item)
        batch = open_batch.get(key)
        if batch is None or len(batch) >= size:
            batch = open_batch[key] = []
            batches.append(batch)
        batch.append(item)
    return batches


def split(requests: Sequence[Mapping[str, str]]) -> tuple[dict[str, str], list[dict[str, str]]]:
    """A batch's fields once (BATCH_FIELDS, which every request shares) and each message's own."""
    first = requests[0]
    shared = {name: first[name] for name in BATCH_FIELDS if name in first}
    return shared, [{name: value for name, value in request.items()
                     if name not in BATCH_FIELDS} for request in requests]


def encode_batch(requests: Sequence[Mapping[str, str]], token: str) -> bytes:
    """The form of one send-list-messages request.

    `messages` is the JSON text in the charset the batch declares, as send-message's text fields
    are: the texts are inside it, and the platform reads them in that charset."""
    shared, messages = split(requests)
    text = json.dumps(messages, ensure_ascii=False, separators=(",", ":"))
    return "&".join([*(quote_plus(name) + "=" + form_value(value, "utf-8")
                       for name, value in {"token": token, **shared}.items()),
                     "messages=" + form_value(text, codec_for(shared))]).encode("ascii")


def classify_batch(status: int, body: bytes, headers: Mapping[str, str], now: float,
                   count: int, secret: str = "") -> list[Outcome]:
    """One outcome per message of a batch of `count`, in order (see the module's docstring)."""
    if status == 429 or status >= 500:
        return [overloaded(status, headers, now)] * count
    reply = json_reply(body)
    if isinstance(reply, list) and len(reply) == count:
        return [_one(item, index, count, secret) for index, item in enumerate(reply)]
    if isinstance(reply, dict):
        if reply.get("type") == "success":
            return [Outcome("sent", platform_id=None)] * count
        if reply.get("type") == "error":
            return [refused(reply, secret)] * count
    detail = unrecognised(status, body, secret)
    if isinstance(reply, list):
        detail += f" (a list of {len(reply)} for {count} messages)"
    return [Outcome("unknown", detail=detail)] * count


def _one(item: object, index: int, count: int, secret: str) -> Outcome:
    if isinstance(item, dict):
        if item.get("type") == "success":
            platform_id = item.get("id")
            return Outcome("sent", platform_id=str(platform_id)
                           if isinstance(platform_id, str | int) and platform_id != "" else None)
        if item.get("type") == "error":
            return refused(item, secret)
    text = unrecognised(200, json.dumps(item, ensure_ascii=False).encode(), secret)
    return Outcome("unknown", detail=f"message {index + 1} of {count} in the reply: {text}")
