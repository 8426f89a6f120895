"""Talking to the platform's send-message: the only module that imports httpx.

It runs in the sender process (gateway.sender_process); what requests and replies mean is in
gateway.platform.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import replace

import httpx
from httpx_aiohttp import AiohttpTransport

from gateway.config import ApiConfig, mask
from gateway.platform import Outcome, classify, encode_form, masked_request, short

log = logging.getLogger("smtp2pulse.deliver")


class PulseClient:
    """One pooled HTTP client for all deliveries; concurrency is bounded by the worker."""

    def __init__(self, api: ApiConfig, *, transport: httpx.AsyncBaseTransport | None = None
                 ) -> None:
        self.api = api
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self.api.base_url.startswith("http://"):
            log.warning("api.base_url %s is plain http: the token travels unencrypted",
                        self.api.base_url)
        limits = httpx.Limits(max_connections=self.api.max_concurrency,
                              max_keepalive_connections=self.api.max_concurrency)
        # httpx's API and exceptions over aiohttp's connection handling: measured here at about
        # 0.5 ms of CPU per request against about 3 ms for httpx's own transport (bench/).
        transport = self._transport or AiohttpTransport(limits=limits)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.api.timeout), limits=limits, transport=transport,
            headers={"Content-Type": "application/x-www-form-urlencoded",
                     "User-Agent": "smtp2pulse"})

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def send(self, request: Mapping[str, str], token: str) -> Outcome:
        assert self._client is not None, "start() first"
        try:
            response = await self._client.post(self.api.send_url,
                                                content=encode_form(request, token))
        except httpx.TimeoutException as exc:
            return Outcome("retry", detail=f"timeout ({type(exc).__name__})")
        except httpx.HTTPError as exc:
            return Outcome("retry", detail=f"{type(exc).__name__}: {short(str(exc))}")
        outcome = classify(response.status_code, response.content, response.headers, time.time())
        if token and token in outcome.detail:   # a platform echoing the request back
            outcome = replace(outcome, detail=outcome.detail.replace(token, mask(token)))
        return outcome


class DryRunClient:
    """Logs the request it would make (token masked) and reports it sent."""

    def __init__(self, api: ApiConfig) -> None:
        self.api = api

    async def start(self) -> None:
        log.warning("dry run: nothing is sent to the platform")

    async def close(self) -> None:
        return None

    async def send(self, request: Mapping[str, str], token: str) -> Outcome:
        log.info("dry run: would POST %s %s", self.api.send_url,
                 json.dumps(masked_request(request, token), ensure_ascii=False))
        return Outcome("sent", platform_id="dry-run")
