"""A misbehaving Pulse platform: a raw HTTP/1.1 server on 127.0.0.1 with switchable replies.

tests/fakeplatform.py is the well-behaved platform; this one answers the way a broken or
hostile one does, byte by byte, which aiohttp's server would not let us. One request per
connection (`Connection: close`). Set `mode` (or `modes`, used in turn, one per request):

- ok               the documented success (a list of them for a batch)
- slow_body        200 and a Content-Length, a few bytes of the body, then nothing
- endless_chunked  200, chunked, chunks for as long as the client reads
- gzip_bomb        200, `Content-Encoding: gzip`, 64 KiB that inflate to `bomb_size` (64 MiB)
- bad_gzip         200, `Content-Encoding: gzip`, bytes that are not gzip
- huge             200 and a JSON-looking body of `huge_size` bytes
- non_utf8         200 and bytes that are not UTF-8
- wrong_length     200 and a list one shorter than the batch (or a list for a single send)
- status_500       500 with an HTML page
- not_found        404 with an HTML page
- never_read       accepts the connection and never reads it (small receive buffer)
- callback_first   calls each message's signed callback (rewritten to `callback_to`) with
                   `callback_status`, then answers ok after `answer_after` seconds

`requests` holds each request's form as received (whole bodies only); `connections` counts
accepted connections. `closed_port_url()` is a base URL whose port refuses connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import zlib
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import parse_qsl, urlsplit

import aiohttp

MODES = (
    "ok",
    "slow_body",
    "endless_chunked",
    "gzip_bomb",
    "bad_gzip",
    "huge",
    "non_utf8",
    "wrong_length",
    "status_500",
    "not_found",
    "never_read",
    "callback_first",
)


@dataclass
class Request:
    path: str
    form: dict[str, str]

    @property
    def batch(self) -> bool:
        return self.path.endswith("/send-list-messages")

    @property
    def messages(self) -> list[dict[str, str]]:
        if not self.batch:
            return [self.form]
        parsed: list[dict[str, str]] = json.loads(self.form["messages"])
        return parsed


def closed_port_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/v1/bulk"


class HostilePlatform:
    _bombs: ClassVar[dict[int, bytes]] = {}

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.modes: list[str] = []  # if set: used in turn, one per request
        self.requests: list[Request] = []
        self.connections = 0
        self.callback_to = ""  # scheme://host:port that replaces the URL's own
        self.callback_status = "delivered"
        self.callback_results: list[tuple[int, str]] = []
        self.answer_after = 7.0
        self.bomb_size = 64 << 20
        self.huge_size = 300 << 20
        self._turn = itertools.count()
        self._ids = itertools.count(5000)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping = asyncio.Event()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/bulk"

    async def start(self) -> None:
        sock = socket.socket()
        # Small buffers, so a peer that never reads fills up at once (never_read).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._serve, sock=sock, limit=1 << 16)
        await self.switch(self.mode, *self.modes)

    async def switch(self, mode: str, *more: str) -> None:
        """Reply in `mode` from now on (or in each of `mode, *more` in turn), with what it
        needs made beforehand, so the first reply is as quick as the next."""
        self.mode, self.modes = mode, [mode, *more] if more else []
        if "gzip_bomb" in (mode, *more):
            await self._bomb()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._stopping.set()
        for writer in self._writers:
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(self._tasks)

    def next_mode(self) -> str:
        if self.modes:
            return self.modes[next(self._turn) % len(self.modes)]
        return self.mode

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            mode = self.next_mode()
            if mode == "never_read":
                await self._never_read(writer)
                return
            request = await _read_request(reader)
            if request is None:
                return
            self.requests.append(request)
            await getattr(self, f"_{mode}")(request, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the gateway hung up, as it should on most of these
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()

    # --- the replies -------------------------------------------------------------------------

    def success(self, request: Request) -> bytes:
        if request.batch:
            return json.dumps(
                [{"type": "success", "id": str(next(self._ids))} for _ in request.messages]
            ).encode()
        return json.dumps({"type": "success", "id": str(next(self._ids))}).encode()

    async def _ok(self, request: Request, writer: asyncio.StreamWriter) -> None:
        await _answer(writer, 200, self.success(request))

    async def _slow_body(self, request: Request, writer: asyncio.StreamWriter) -> None:
        body = self.success(request)
        writer.write(_head(200, {"Content-Length": str(len(body) + 100)}) + body[:5])
        await writer.drain()
        await self._stopping.wait()

    async def _endless_chunked(self, request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, {"Transfer-Encoding": "chunked"}) + b"1\r\n[\r\n")
        chunk = b'{"type":"success","id":"1"},' * 2000
        frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        while not self._stopping.is_set():
            writer.write(frame)
            await writer.drain()

    async def _gzip_bomb(self, request: Request, writer: asyncio.StreamWriter) -> None:
        await _answer(writer, 200, await self._bomb(), {"Content-Encoding": "gzip"})

    async def _bomb(self) -> bytes:
        """`bomb_size` of "0" gzipped (a second per 256 MiB: made once, before the first use)."""
        bomb = self._bombs.get(self.bomb_size)
        if bomb is None:
            bomb = self._bombs[self.bomb_size] = await asyncio.to_thread(
                _gzip_zeros, self.bomb_size
            )
        return bomb

    async def _bad_gzip(self, request: Request, writer: asyncio.StreamWriter) -> None:
        await _answer(writer, 200, b"\x1f\x8bnot gzip at all" * 10, {"Content-Encoding": "gzip"})

    async def _huge(self, request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, {"Content-Length": str(self.huge_size)}))
        chunk = b'{"type":"success","id":"1"} ' * 4096
        left = self.huge_size
        while left > 0:
            writer.write(chunk[:left])
            left -= len(chunk)
            await writer.drain()

    async def _non_utf8(self, request: Request, writer: asyncio.StreamWriter) -> None:
        await _answer(writer, 200, b'{"type": "success", "id": "\xff\xfe\xc3\x28"}')

    async def _wrong_length(self, request: Request, writer: asyncio.StreamWriter) -> None:
        items = [{"type": "success", "id": "1"}] * max(len(request.messages) - 1, 2)
        await _answer(writer, 200, json.dumps(items).encode())

    async def _status_500(self, request: Request, writer: asyncio.StreamWriter) -> None:
        await _answer(
            writer,
            500,
            b"<html><body>Internal Server Error</body></html>",
            {"Content-Type": "text/html"},
        )

    async def _not_found(self, request: Request, writer: asyncio.StreamWriter) -> None:
        await _answer(
            writer, 404, b"<html><body>404 Not Found</body></html>", {"Content-Type": "text/html"}
        )

    async def _never_read(self, writer: asyncio.StreamWriter) -> None:
        # Held, unread, until stop(): the client's data piles up in its own buffers.
        transport = writer.transport
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        await self._stopping.wait()

    async def _callback_first(self, request: Request, writer: asyncio.StreamWriter) -> None:
        async with aiohttp.ClientSession() as session:
            for number, message in enumerate(request.messages):
                url = message.get("callback", "")
                if not url:
                    continue
                parts = urlsplit(url)
                base = self.callback_to or f"{parts.scheme}://{parts.netloc}"
                filled = f"{base}{parts.path}?{parts.query}".replace(
                    "{id}", str(9000 + number)
                ).replace("{status}", self.callback_status)
                try:
                    async with session.get(filled) as reply:
                        self.callback_results.append((reply.status, await reply.text()))
                except aiohttp.ClientError as exc:
                    self.callback_results.append((0, str(exc)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.answer_after)
        await _answer(writer, 200, self.success(request))


def _gzip_zeros(size: int) -> bytes:
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"0" * (1 << 20)
    return b"".join(squeeze.compress(zeros) for _ in range(size >> 20)) + squeeze.flush()


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [
        f"HTTP/1.1 {status} X",
        "Connection: close",
        *(
            f"{name}: {value}"
            for name, value in {"Content-Type": "application/json", **headers}.items()
        ),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _answer(
    writer: asyncio.StreamWriter, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    writer.write(_head(status, {"Content-Length": str(len(body)), **(headers or {})}) + body)
    await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) < 2:
        return None
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    body = await reader.readexactly(length)
    form = dict(parse_qsl(body.decode("ascii", "replace"), keep_blank_values=True))
    return Request(parts[1], form)
