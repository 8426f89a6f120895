"""A fake Pulse platform: a real HTTP server on 127.0.0.1 that records every request.

Tests script its replies and assert on exactly the form fields it received. It serves
send-message and send-list-messages; a batch's `messages` is also kept parsed, and its default
reply is a list of one send-message-style success per message.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from aiohttp import web


@dataclass
class Reply:
    status: int = 200
    body: str | None = None  # None: the documented success JSON with a fresh id
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    path: str
    method: str
    content_type: str
    raw: bytes
    form: dict[str, str]
    at: float = 0.0  # loop time of arrival
    answered: bool = False  # its reply is made (and on its way)

    @property
    def batch(self) -> bool:
        return self.path.endswith("/send-list-messages")

    @property
    def messages(self) -> list[dict[str, str]]:
        """A batch's messages (a send-message's one request, as a list of one)."""
        if not self.batch:
            return [self.form]
        parsed: list[dict[str, str]] = json.loads(self.form["messages"])
        return parsed


class FakePlatform:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: list[Reply] = []  # consumed one per request, then `default`
        self.default: Reply = Reply()
        self.decode_as: Callable[[bytes], dict[str, str]] | None = None
        self._ids = itertools.count(1000)
        self.inflight = 0
        self.max_inflight = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/bulk"

    async def start(self, port: int = 0) -> None:
        app = web.Application(client_max_size=64 << 20)  # big batches are the gateway's to cut
        app.router.add_route("*", "/api/v1/bulk/send-message", self._send_message)
        app.router.add_route("*", "/api/v1/bulk/send-list-messages", self._send_message)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart_on(self, port: int) -> None:
        await self.start(port)

    async def _send_message(self, request: web.Request) -> web.Response:
        raw = await request.read()
        form = (self.decode_as or _utf8_form)(raw)
        received = Received(
            request.path,
            request.method,
            request.headers.get("Content-Type", ""),
            raw,
            form,
            asyncio.get_running_loop().time(),
        )
        self.requests.append(received)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            return await self._reply(received)
        finally:
            received.answered = True
            self.inflight -= 1

    @property
    def messages(self) -> list[dict[str, str]]:
        """Every message received, in order, whether alone or in a batch."""
        return [message for received in self.requests for message in received.messages]

    async def _reply(self, received: Received) -> web.Response:
        async with self._changed:
            self._changed.notify_all()
        reply = self.script.pop(0) if self.script else self.default
        if reply.delay:
            await asyncio.sleep(reply.delay)
        body = reply.body
        if body is None and received.batch:
            body = json.dumps(
                [{"type": "success", "id": str(next(self._ids))} for _ in received.messages]
            )
        elif body is None:
            body = f'{{"type": "success", "id": "{next(self._ids)}"}}'
        return web.Response(
            status=reply.status, text=body, headers=reply.headers, content_type="application/json"
        )

    async def wait_for(self, count: int, within: float = 10.0) -> list[Received]:
        """Until at least `count` requests arrived (fails the test after `within` seconds)."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.requests) >= count), within
            )
        return self.requests


def _utf8_form(raw: bytes) -> dict[str, str]:
    return dict(parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=True))
