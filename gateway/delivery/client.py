"""Talking to the platform's send-message and send-list-messages: the only module that
imports httpx.

It runs in the daemon or in the sender process (sender_process.py); what requests and replies
mean is in request.py and batch.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence

import httpx
from httpx_aiohttp import AiohttpTransport

from gateway.config.model import ApiConfig
from gateway.delivery.batch import classify_batch, encode_batch, split
from gateway.delivery.request import (
    Outcome,
    classify,
    encode_form,
    mask_secret,
    masked_request,
    short,
)

log = logging.getLogger("smtp2pulse.deliver")


class PulseClient:
    """One pooled HTTP client for all deliveries; concurrency is bounded by the worker.

    Requests go straight to the httpx transport (the public `handle_async_request`): httpx's
    client layer around it (URL merging, cookie extraction, auth and redirect handling) does
    nothing a send-message needs and was about a third of the sender process's CPU (bench/).
    Timeouts travel in the request's extensions as the client would put them there, and the
    transport raises httpx's own exceptions.
    """

    def __init__(self, api: ApiConfig, *, transport: httpx.AsyncBaseTransport | None = None
                 ) -> None:
        self.api = api
        self._transport = transport
        self._active: httpx.AsyncBaseTransport | None = None
        self._url = httpx.URL(api.send_url)
        self._batch_url = httpx.URL(api.batch_url)
        self._headers = httpx.Headers({"Content-Type": "application/x-www-form-urlencoded",
                                       "User-Agent": "smtp2pulse"})
        self._timeout = httpx.Timeout(api.timeout).as_dict()

    async def start(self) -> None:
        if self.api.base_url.startswith("http://"):
            log.warning("api.base_url %s is plain http: the token travels unencrypted",
                        self.api.base_url)
        limits = httpx.Limits(max_connections=self.api.max_concurrency,
                              max_keepalive_connections=self.api.max_concurrency)
        # httpx's API and exceptions over aiohttp's connection handling, which measured several
        # times cheaper in CPU per request than httpx's own transport.
        self._active = self._transport or AiohttpTransport(limits=limits)

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
        return classify(*reply, time.time(), secret=token)   # a platform echoing the request

    async def send_batch(self, requests: Sequence[Mapping[str, str]], token: str
                         ) -> list[Outcome]:
        reply = await self._post(self._batch_url, encode_batch(requests, token), token)
        if isinstance(reply, Outcome):
            return [reply] * len(requests)
        return classify_batch(*reply, time.time(), len(requests), secret=token)

    async def _post(self, url: httpx.URL, content: bytes, token: str
                    ) -> tuple[int, bytes, httpx.Headers] | Outcome:
        """The reply's status, body and headers; an Outcome (a retry) if there is none."""
        assert self._active is not None, "start() first"
        http_request = httpx.Request("POST", url, headers=self._headers, content=content,
                                     extensions={"timeout": self._timeout})
        try:
            # One deadline for the whole request: httpx's timeouts limit each read, and a
            # platform dribbling a byte a second would hold the send past its lease, when the
            # same delivery is due again and sent twice.
            async with asyncio.timeout(self.api.timeout):
                response = await self._active.handle_async_request(http_request)
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except TimeoutError:
            return Outcome("retry", detail=f"timeout (no whole reply within {self.api.timeout:g}s)")
        except httpx.TimeoutException as exc:
            return Outcome("retry", detail=f"timeout ({type(exc).__name__})")
        except httpx.HTTPError as exc:
            text = mask_secret(str(exc), token)
            return Outcome("retry", detail=f"{type(exc).__name__}: {short(text)}")
        return response.status_code, response.content, response.headers


class DryRunClient:
    """Logs the request it would make (token masked) and reports it sent."""

    def __init__(self, api: ApiConfig) -> None:
        self.api = api

    async def start(self) -> None:
        log.warning("dry run: nothing is sent to the platform")

    async def stop(self) -> None:
        return None

    def ready(self) -> bool:
        return True

    async def send(self, request: Mapping[str, str], token: str) -> Outcome:
        log.info("dry run: would POST %s %s", self.api.send_url,
                 json.dumps(masked_request(request, token), ensure_ascii=False))
        return Outcome("sent", platform_id="dry-run")

    async def send_batch(self, requests: Sequence[Mapping[str, str]], token: str
                         ) -> list[Outcome]:
        shared, messages = split(requests)
        log.info("dry run: would POST %s %s and %d messages: %s", self.api.batch_url,
                 json.dumps(masked_request(shared, token), ensure_ascii=False), len(messages),
                 json.dumps(messages, ensure_ascii=False))
        return [Outcome("sent", platform_id="dry-run")] * len(requests)
