"""A fast fake Pulse platform for the bench, in its own process.

POST /api/v1/bulk/send-message answers `{"type": "success", "id": "<n>"}` after --latency
seconds, or 503 for a --fail fraction of requests (those count as not delivered: the gateway
must try again). Each successful request is recorded by its key, `<marker> <sent_to>`, where the
marker is the first word of `sent_text` (the gateway's default template puts the Subject, which
the load generator sets to `bench-<run>-<n>`, on the first line).

POST /api/v1/bulk/send-list-messages (a batch) is one request: its form's `messages`, a JSON
list in UTF-8 or CP1251, is decoded whole and each message in it recorded under the same key as
a send-message; the reply, after --latency, is a JSON list of one success with a fresh id per
message, or 503 for the whole request (a --fail fraction of requests, batches or not).

GET /stats        small JSON of counters, cheap enough to poll
GET /deliveries   {"deliveries": {key: [count, first_arrival, last_arrival]}} (time.time())

It runs in its own process so that its event loop does not share a core's time slices with the
load generator's; it prints its port on the first line of stdout. It speaks just enough HTTP/1.1
(keep-alive, Content-Length bodies) on a bare asyncio protocol, and reads only the start of each
`sent_text`: the real platform runs on another machine, and on the bench's two cores every
microsecond this fake spends is taken from the gateway it measures. With the bench's 1 KB
Cyrillic messages it costs about 0.14 ms of CPU a request, most of it the event loop's socket
calls; decoding each whole form (parse_qs) had made that 0.37 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import time
from urllib.parse import unquote_plus, unquote_to_bytes

from lifetime import until_stopped

SEND_PATH = b"/api/v1/bulk/send-message"
LIST_PATH = b"/api/v1/bulk/send-list-messages"
_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 19\r\n\r\nService Unavailable"
)


def _response(status: bytes, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class Platform:
    def __init__(self, latency: float, fail: float, seed: int) -> None:
        self.latency = latency
        self.fail = fail
        self.rng = random.Random(seed)  # seeded: the same failure pattern every round
        self.ids = itertools.count(1)
        self.requests = 0
        self.failed = 0
        self.delivered = 0  # messages successfully sent, duplicates included
        self.batch_requests = 0  # send-list-messages requests (503'd ones included)
        self.batch_messages = 0  # messages in them
        self.unmarked = 0  # successful requests without a bench marker
        self.deliveries: dict[str, list[float]] = {}  # key -> [count, first, last]
        self.last_arrival = 0.0

    def answer(self, method: bytes, path: bytes, body: bytes, arrived: float) -> bytes:
        if method == b"POST" and path == SEND_PATH:
            self.requests += 1
            if self.fail and self.rng.random() < self.fail:
                self.failed += 1
                return _UNAVAILABLE
            self._record(delivery_key(body), arrived)
            return _response(b"200 OK", b'{"type": "success", "id": "%d"}' % next(self.ids))
        if method == b"POST" and path == LIST_PATH:
            return self._batch(body, arrived)
        if method == b"GET" and path == b"/stats":
            return _response(
                b"200 OK",
                json.dumps(
                    {
                        "requests": self.requests,
                        "failed": self.failed,
                        "delivered": self.delivered,
                        "batch_requests": self.batch_requests,
                        "batch_messages": self.batch_messages,
                        "unique": len(self.deliveries),
                        "unmarked": self.unmarked,
                        "last_arrival": self.last_arrival,
                    }
                ).encode(),
            )
        if method == b"GET" and path == b"/deliveries":
            return _response(b"200 OK", json.dumps({"deliveries": self.deliveries}).encode())
        return _response(b"404 Not Found", b"not found", b"text/plain")

    def _batch(self, body: bytes, arrived: float) -> bytes:
        self.requests += 1
        self.batch_requests += 1
        try:
            messages = batch_messages(body)
        except ValueError as exc:
            return _response(b"400 Bad Request", f"bad messages: {exc}".encode(), b"text/plain")
        self.batch_messages += len(messages)
        if self.fail and self.rng.random() < self.fail:
            self.failed += 1
            return _UNAVAILABLE
        replies = []
        for message in messages:
            self._record(message_key(message), arrived)
            replies.append(f'{{"type": "success", "id": "{next(self.ids)}"}}')
        return _response(b"200 OK", ("[" + ", ".join(replies) + "]").encode())

    def _record(self, key: str | None, arrived: float) -> None:
        self.delivered += 1
        self.last_arrival = max(self.last_arrival, arrived)
        if key is None:
            self.unmarked += 1
            return
        entry = self.deliveries.get(key)
        if entry is None:
            self.deliveries[key] = [1, arrived, arrived]
        else:
            entry[0] += 1
            entry[2] = arrived


class Http(asyncio.Protocol):
    """One connection: requests answered in order, each after the platform's latency."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.pending: list[list[bytes | None]] = []  # answers in request order, None = not yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].split(b"\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, path = head[0].split(b" ")[:2]
            answer = self.platform.answer(method, path, body, time.time())
            slot: list[bytes | None] = [None]
            self.pending.append(slot)
            if self.platform.latency and path in (SEND_PATH, LIST_PATH):
                asyncio.get_running_loop().call_later(
                    self.platform.latency, self._ready, slot, answer
                )
            else:
                self._ready(slot, answer)

    def _ready(self, slot: list[bytes | None], answer: bytes) -> None:
        slot[0] = answer
        while self.pending and self.pending[0][0] is not None:
            done = self.pending.pop(0)[0]
            if self.transport is not None and not self.transport.is_closing():
                assert done is not None
                self.transport.write(done)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


_MARKER_ROOM = 240  # a marker is about 20 characters: 240 escaped octets hold it and more


def delivery_key(raw: bytes) -> str | None:
    """`<marker> <sent_to>` from a form-encoded request, or None if it carries no marker.

    Only the start of `sent_text` is decoded: the gateway escapes every octet of a non-ASCII
    text, so decoding a 1 KB Cyrillic text whole (parse_qs) cost about 0.2 ms of CPU a
    request, taken on the bench's two cores from the gateway it measures."""
    text = sent_to = None
    for part in raw.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == b"sent_text" and text is None:
            text = value
        elif name == b"sent_to" and sent_to is None:
            sent_to = value
    words = _decoded((text or b"")[:_MARKER_ROOM]).split(None, 1)
    if not words or not words[0].startswith("bench-"):
        return None
    return f"{words[0]} {_decoded(sent_to or b'')}"


def batch_messages(raw: bytes) -> list[dict[str, object]]:
    """The `messages` list of a send-list-messages form: percent-decoded to bytes, read as
    UTF-8 or else CP1251 (the request's charset), then JSON. ValueError if it is not a list."""
    value = b""
    for part in raw.split(b"&"):
        name, _, found = part.partition(b"=")
        if name == b"messages":
            value = found
            break
    data = _unquoted(value)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("cp1251", "replace")
    messages = json.loads(text)
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError("not a list of objects")
    return messages


def _unquoted(value: bytes) -> bytes:
    """A form value's bytes. The gateway escapes every octet of a non-ASCII value, so that case
    takes bytes.fromhex at C speed: unquote_to_bytes's per-octet Python loop cost about 0.3 ms
    of CPU per 1 KB Cyrillic message of a batch, more than the gateway spends to send it."""
    if len(value) % 3 == 0 and value[::3].count(b"%") == len(value) // 3:
        with contextlib.suppress(ValueError):
            return bytes.fromhex(value.replace(b"%", b"").decode("ascii"))
    return unquote_to_bytes(value.replace(b"+", b" "))


def message_key(message: dict[str, object]) -> str | None:
    """`<marker> <sent_to>` of one message of a batch, as delivery_key for a send-message."""
    words = str(message.get("sent_text") or "")[:_MARKER_ROOM].split(None, 1)
    if not words or not words[0].startswith("bench-"):
        return None
    return f"{words[0]} {message.get('sent_to') or ''}"


def _decoded(value: bytes) -> str:
    return unquote_plus(value.decode("ascii", "replace"), encoding="utf-8", errors="replace")


async def serve(port: int, platform: Platform, max_seconds: float) -> None:
    server = await asyncio.get_running_loop().create_server(
        lambda: Http(platform), "127.0.0.1", port, backlog=1024
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    try:
        await until_stopped(max_seconds)
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="fake Pulse platform on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--fail", type=float, default=0.0, help="fraction answered with 503")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=3600)
    args = parser.parse_args()
    asyncio.run(serve(args.port, Platform(args.latency, args.fail, args.seed), args.max_seconds))


if __name__ == "__main__":
    main()
