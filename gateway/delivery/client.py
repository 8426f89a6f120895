"""Talking to the platform's send-message and send-list-messages: the only module that
imports httpx.

It runs in the daemon or in the sender process (sender_process.py); what requests and replies
mean is in request.py and batch.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace

import aiohttp
import httpx
from aiohttp.connector import Connection
from httpx_aiohttp import AiohttpTransport

from gateway.config.model import ApiConfig
from gateway.delivery.batch import classify_batch, encode_batch
from gateway.delivery.reply import Body, Unreadable, is_utf8
from gateway.delivery.request import (
    Outcome,
    classify,
    config_hint,
    encode_form,
    mask_secret,
    short,
)

log = logging.getLogger("smtp2pulse.deliver")

# Bodies past this (aiohttp's own threshold) are written in pieces of STREAM_PIECE (_request).
STREAM_FROM = 1 << 20
STREAM_PIECE = 1 << 16
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets
# A platform answering 4xx is told to the log at most this often (the first at once).
CONFIG_WARNING_EVERY = 60.0

# The connections a request in this task has used; see _TrackedRequest.
_used: contextvars.ContextVar[list[asyncio.Transport]] = contextvars.ContextVar("used")


class _TrackedRequest(aiohttp.ClientRequest):
    """Notes the connection a request goes out on, so that a request given up on can abort it.

    aiohttp closes the connection of a cancelled request with `transport.close()`, which keeps
    the socket until its write buffer drains: to a platform that never reads, never, and each
    timed-out request left its socket and a copy of its body behind (issue 29).
    """

    async def send(self, conn: Connection) -> aiohttp.ClientResponse:
        used = _used.get(None)
        if used is not None and conn.transport is not None:
            used.append(conn.transport)
        return await super().send(conn)


@dataclass(frozen=True, slots=True)
class PlatformError:
    """The platform's last answer that says our configuration is wrong (a 4xx but 429)."""

    at: float
    url: str
    status: int
    hint: str


class PulseClient:
    """One pooled HTTP client for all deliveries; concurrency is bounded by the worker.

    Requests go straight to the httpx transport (the public `handle_async_request`): httpx's
    client layer around it (URL merging, cookie extraction, auth and redirect handling) does
    nothing a send-message needs and was about a third of the sender process's CPU (bench/).
    Timeouts travel in the request's extensions as the client would put them there, and the
    transport raises httpx's own exceptions.
    """

    def __init__(
        self, api: ApiConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.api = api
        self._transport = transport
        self._active: httpx.AsyncBaseTransport | None = None
        self._url = httpx.URL(api.send_url)
        self._batch_url = httpx.URL(api.batch_url)
        # identity: replies are small; one compressed anyway is still undone within the cap.
        self._headers = httpx.Headers(
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "User-Agent": "smtp2pulse",
                "Accept-Encoding": "identity",
            }
        )
        self._timeout = httpx.Timeout(api.timeout).as_dict()
        self.platform_error: PlatformError | None = None
        self._warned_at = 0.0
        self._unwarned = 0

    async def start(self) -> None:
        if self.api.base_url.startswith("http://"):
            log.warning(
                "api.base_url %s is plain http: the token travels unencrypted", self.api.base_url
            )
        # httpx's API and exceptions over aiohttp's connection handling, which measured several
        # times cheaper in CPU per request than httpx's own transport; the session is ours so
        # that its requests can be aborted (_TrackedRequest).
        if self._transport is not None:
            self._active = self._transport
            return
        connector = aiohttp.TCPConnector(
            limit=self.api.max_concurrency, keepalive_timeout=5.0, ssl=httpx.create_ssl_context()
        )
        session = aiohttp.ClientSession(connector=connector, request_class=_TrackedRequest)
        self._active = AiohttpTransport(client=session)

    async def stop(self) -> None:
        if self._active is not None:
            await self._active.aclose()
            self._active = None

    def ready(self) -> bool:
        return self._active is not None

    async def send(self, request: Mapping[str, str], token: str) -> Outcome:
        reply = await self._post(self._url, encode_form(request, token), token)
        if isinstance(reply, Outcome):
            return reply
        outcome = classify(*reply, time.time(), secret=token)  # a platform echoing the request
        return self._told(reply[0], [outcome])[0]

    async def send_batch(self, requests: Sequence[Mapping[str, str]], token: str) -> list[Outcome]:
        reply = await self._post(self._batch_url, encode_batch(requests, token), token)
        if isinstance(reply, Outcome):
            return [reply] * len(requests)
        return self._told(
            reply[0], classify_batch(*reply, time.time(), len(requests), secret=token)
        )

    def _told(self, status: int, outcomes: list[Outcome]) -> list[Outcome]:
        """The outcomes, each carrying the platform error a 4xx reply tells (if any)."""
        error = self.platform_error
        if error is None or error.status != status:
            return outcomes
        return [
            replace(outcome, config_error=f"HTTP {status} from {error.url}: {error.hint}")
            for outcome in outcomes
        ]

    async def _post(
        self, url: httpx.URL, content: bytes, token: str
    ) -> tuple[int, bytes, httpx.Headers] | Outcome:
        """The reply's status, body and headers; an Outcome if there is none.

        No status: a retry (the request may not have arrived). A 2xx whose body cannot be read
        (cut, slow, too big, undecodable): the platform has the request, so the outcome is
        unknown, never a retry that would send it twice. Another status: a retry.
        """
        assert self._active is not None, "start() first"
        http_request = self._request(url, content)
        used: list[asyncio.Transport] = []
        context = _used.set(used)
        status: int | None = None
        complete = False
        try:
            # One deadline for the whole request: httpx's timeouts limit each read, and a
            # platform dribbling a byte a second would hold the send past its lease, when the
            # same delivery is due again and sent twice.
            async with asyncio.timeout(self.api.timeout):
                response = await self._active.handle_async_request(http_request)
                status = response.status_code
                try:
                    body = Body(response.headers.get("content-encoding", ""))
                    async for chunk in response.aiter_raw():
                        body.feed(chunk)
                    complete = True
                finally:
                    if not complete:
                        _abort(used)
                    await response.aclose()
        except TimeoutError:
            _abort(used)
            return self._unread(status, f"timeout (no whole reply within {self.api.timeout:g}s)")
        except Unreadable as exc:
            return self._unread(status, str(exc))
        except httpx.HTTPError as exc:
            _abort(used)
            return self._unread(status, failure(exc, token))
        except BaseException:  # cancelled (a stop), or a bug: the connection goes too
            _abort(used)
            raise
        finally:
            _used.reset(context)
        self._note_status(url, status)
        data = body.content()
        if 200 <= status < 300 and not is_utf8(data):
            return self._unread(status, "not UTF-8")
        return status, data, response.headers

    def _request(self, url: httpx.URL, content: bytes) -> httpx.Request:
        extensions = {"timeout": self._timeout}
        if len(content) <= STREAM_FROM:
            return httpx.Request(
                "POST", url, headers=self._headers, content=content, extensions=extensions
            )
        # A big body goes out a piece at a time, each written once the last has left: the
        # whole of it is never copied into the connection's buffer (where a platform that
        # does not read would keep it). Its length is known: not chunked.
        headers = httpx.Headers(self._headers)
        headers["Content-Length"] = str(len(content))
        return httpx.Request(
            "POST", url, headers=headers, content=_pieces(content), extensions=extensions
        )

    def _unread(self, status: int | None, why: str) -> Outcome:
        if status is None:
            return Outcome("retry", detail=why)
        if 200 <= status < 300:
            return Outcome("unknown", detail=f"HTTP {status}, reply unreadable: {why}")
        return Outcome("retry", detail=f"HTTP {status}, reply unreadable: {why}")

    def _note_status(self, url: httpx.URL, status: int) -> None:
        """Remember (and tell the log, loudly) a 4xx that says our configuration is wrong."""
        if 200 <= status < 300:
            self.platform_error = None
            return
        if status < 400 or status >= 500 or status == 429:
            return
        hint = config_hint(self.api.base_url, status)
        self.platform_error = PlatformError(time.time(), str(url), status, hint)
        now = time.monotonic()
        if now - self._warned_at < CONFIG_WARNING_EVERY and self._warned_at:
            self._unwarned += 1
            return
        repeats = f" ({self._unwarned} more since the last warning)" if self._unwarned else ""
        log.warning(
            "the platform answered HTTP %d to POST %s: %s; a single send is retried on"
            " schedule, a batch's messages are unconfirmed until queue retry%s",
            status,
            url,
            hint,
            repeats,
        )
        self._warned_at, self._unwarned = now, 0


def failure(exc: httpx.HTTPError, token: str) -> str:
    """A failed request in an operator's words. httpx-aiohttp maps every aiohttp connection
    error to ConnectTimeout, a refused connection included; the aiohttp error underneath says
    what happened."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientConnectorError):
        where = f"{cause.host}:{cause.port}"
        if isinstance(cause.os_error, ConnectionRefusedError):
            return f"connection refused by {where} (is api.base_url right, is the platform up?)"
        return mask_secret(f"cannot connect to {where}: {cause.os_error}", token)
    if isinstance(cause, aiohttp.ServerTimeoutError | TimeoutError):
        return f"timeout ({type(cause).__name__})"
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return "the platform closed the connection without a reply"
    if isinstance(exc, httpx.TimeoutException) and cause is None:
        return f"timeout ({type(exc).__name__})"
    text = mask_secret(str(cause or exc), token)
    return f"{type(cause or exc).__name__}: {short(text)}"


async def _pieces(content: bytes) -> AsyncIterator[bytes]:
    view = memoryview(content)
    for start in range(0, len(view), STREAM_PIECE):
        yield bytes(view[start : start + STREAM_PIECE])


def _abort(used: list[asyncio.Transport]) -> None:
    """Drop the request's connections now, unsent data and all (see _TrackedRequest): a reset,
    not a close, or the kernel keeps what it had queued for a peer that does not read."""
    for transport in used:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        transport.abort()
