"""send-list-messages: many deliveries in one request, and what its undocumented reply means.

The platform takes `token`, `type`, `sender` and `charset` once per request and the rest of each
message in a JSON list, `messages` (../shared/reference/pulse-http-api.md). So only deliveries
that agree on those four can share a request (`group`); each keeps its own fields, its signed
callback among them, so statuses come back per message as for single sends.

The reply is not documented. What is read (the contract, Durability):

- a JSON list of send-message-style objects, one per message in order: each settles its own;
- `{"type": "success"}` or `{"type": "error", "msg": ...}`: all of them alike;
- HTTP 429 or 5xx, and (in the client) no reply at all: every one is tried again;
- a 4xx but 429 without one of those: tried again (not taken; our configuration is wrong);
- anything else, a 200 with HTML, a list of the wrong length, a 2xx whose body the client could
  not read (cut, too slow, too big, not UTF-8): **unknown**. The platform
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
# A batch is cut where its form would pass this many bytes. Each message carries its own text:
# 20 copies of a 0.9 MB text are over 50 MB of form, held per request in flight. One message
# bigger than this goes alone, as it must.
MAX_BATCH_BYTES = 2 << 20
# Past this many characters a message's size is measured; below, bounded from its length.
_MEASURE_FROM = 4096
# The most form bytes one character can take: \u escaped in JSON (6), each byte as %XX (3).
_WORST_PER_CHAR = 18

BatchKey = tuple[str, str | None, str | None, str | None]


def batch_key(outgoing: Outgoing) -> BatchKey:
    """What two deliveries must share to go in one request (an absent field is its own value:
    a sender set for one and left to the platform's default for another stay apart)."""
    fields = outgoing.fields
    return (outgoing.token, fields.get("type"), fields.get("sender"), fields.get("charset"))


def group(
    outgoing: Sequence[Outgoing], size: int, max_bytes: int = MAX_BATCH_BYTES
) -> list[list[Outgoing]]:
    """Batches of at most `size` and about `max_bytes` of form (form_bytes) that share a key,
    in the order the first of each came."""
    open_batch: dict[BatchKey, tuple[list[Outgoing], list[int]]] = {}
    batches: list[list[Outgoing]] = []
    for item in outgoing:
        key = batch_key(item)
        weight = form_bytes(item.fields) if size > 1 else 0
        batch, total = open_batch.get(key, (None, [0]))
        if batch is None or len(batch) >= size or total[0] + weight > max_bytes:
            batch, total = open_batch[key] = [], [0]
            batches.append(batch)
        batch.append(item)
        total[0] += weight
    return batches


def form_bytes(fields: Mapping[str, str]) -> int:
    """At least the bytes a message adds to a batch's form: exact for a text not in ASCII
    (every byte escaped), at most three times too many for one in ASCII."""
    chars = sum(map(len, fields.values()))
    if chars < _MEASURE_FROM:
        return chars * _WORST_PER_CHAR
    text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    return 3 * len(text.encode(codec_for(fields), "replace"))


def split(requests: Sequence[Mapping[str, str]]) -> tuple[dict[str, str], list[dict[str, str]]]:
    """A batch's fields once (BATCH_FIELDS, which every request shares) and each message's own."""
    first = requests[0]
    shared = {name: first[name] for name in BATCH_FIELDS if name in first}
    return shared, [
        {name: value for name, value in request.items() if name not in BATCH_FIELDS}
        for request in requests
    ]


def encode_batch(requests: Sequence[Mapping[str, str]], token: str) -> bytes:
    """The form of one send-list-messages request.

    `messages` is the JSON text in the charset the batch declares, as send-message's text fields
    are: the texts are inside it, and the platform reads them in that charset."""
    shared, messages = split(requests)
    text = json.dumps(messages, ensure_ascii=False, separators=(",", ":"))
    return "&".join(
        [
            *(
                quote_plus(name) + "=" + form_value(value, "utf-8")
                for name, value in {"token": token, **shared}.items()
            ),
            "messages=" + form_value(text, codec_for(shared)),
        ]
    ).encode("ascii")


def classify_batch(
    status: int, body: bytes, headers: Mapping[str, str], now: float, count: int, secret: str = ""
) -> list[Outcome]:
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
    # A 4xx without the documented error JSON too (the contract: any other reply is unknown);
    # most likely our own configuration, which the client says loudly (PulseClient._note_status).
    if isinstance(reply, list):
        detail += f" (a list of {len(reply)} for {count} messages)"
    return [Outcome("unknown", detail=detail)] * count


def _one(item: object, index: int, count: int, secret: str) -> Outcome:
    if isinstance(item, dict):
        if item.get("type") == "success":
            platform_id = item.get("id")
            return Outcome(
                "sent",
                platform_id=str(platform_id)
                if isinstance(platform_id, str | int) and platform_id != ""
                else None,
            )
        if item.get("type") == "error":
            return refused(item, secret)
    text = unrecognised(200, json.dumps(item, ensure_ascii=False).encode(), secret)
    return Outcome("unknown", detail=f"message {index + 1} of {count} in the reply: {text}")
