"""How a message's requests are stored: the long values once per message, not per delivery."""

from __future__ import annotations

import json
from collections.abc import Mapping

# A request value this long is stored once per message, however many deliveries carry it
# (sent_text and html_text are the size of the mail; a delivery's own fields are a few bytes).
SHARED_MIN = 64


def pack_requests(requests: list[Mapping[str, str]]) -> tuple[str | None, list[str]]:
    """A message's requests as stored: the long values once, in a list for the message (its
    `texts`), and each request as JSON in which such a value is its index in that list (a
    number, where a request's own values are always text)."""
    texts: list[str] = []
    index: dict[str, int] = {}
    packed: list[str] = []
    for request in requests:
        fields: dict[str, str | int] = {}
        for key, value in request.items():
            if len(value) >= SHARED_MIN:
                position = index.get(value)
                if position is None:
                    position = index[value] = len(texts)
                    texts.append(value)
                fields[key] = position
            else:
                fields[key] = value
        packed.append(json.dumps(fields, ensure_ascii=False))
    return (json.dumps(texts, ensure_ascii=False) if texts else None), packed


def load_texts(column: str | None) -> list[str]:
    return json.loads(column) if column else []


def unpack_request(column: str, texts: list[str]) -> dict[str, str]:
    """The full request back from a delivery's row and its message's texts; a row written
    before texts were shared holds every value itself and comes back as it is."""
    fields = json.loads(column)
    for key, value in fields.items():
        if isinstance(value, int):
            fields[key] = texts[value]
    return dict(fields)
