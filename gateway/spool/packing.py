"""How a message's requests are stored: the long values once per message, not per delivery."""

from __future__ import annotations

import json
from collections.abc import Mapping

from gateway.errors import TooManyTexts

# A request value this long is stored once per message, however many deliveries carry it
# (sent_text and html_text are the size of the mail; a delivery's own fields are a few bytes).
SHARED_MIN = 64
# What the distinct texts of one message may add up to, in units of smtp.max_message_size: room
# for the text and HTML of a message sent to several domains, not for a copy per recipient.
TEXTS_PER_MESSAGE_SIZE = 10


class SharedTexts:
    """The long request values of one message, each kept once however many requests carry it.

    Rendering a request per recipient makes a new copy of the text every time; sharing them as
    they are made keeps one copy in memory, and the spool stores what is shared once. Texts
    that differ per recipient (a template with {to} or {recipient}) cannot be shared, so what
    one message may cost is bounded: past TEXTS_PER_MESSAGE_SIZE times the size limit in
    distinct texts it is refused as too large, before the next copy is made.
    """

    __slots__ = ("_seen", "limit", "size")

    def __init__(self, max_message_size: int) -> None:
        self._seen: dict[str, str] = {}
        self.size = 0
        self.limit = TEXTS_PER_MESSAGE_SIZE * max_message_size

    def share(self, request: Mapping[str, str]) -> dict[str, str]:
        shared = dict(request)
        for key, value in request.items():
            if len(value) < SHARED_MIN:
                continue
            known = self._seen.get(value)
            if known is None:
                self.size += len(value)
                if self.size > self.limit:
                    raise TooManyTexts
                self._seen[value] = known = value
            shared[key] = known
        return shared


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
