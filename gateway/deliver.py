"""Talking to the platform's send-message: the only module that imports httpx.

The platform documents exactly two replies: `{"type": "success", "id": ...}` and
`{"type": "error", "msg": ...}`. Everything else — a timeout, a reset, a 5xx, a 429, an HTML
error page, JSON of another shape — is an unknown outcome and is retried, never taken as success.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import quote_plus

import httpx
from httpx_aiohttp import AiohttpTransport

from gateway.config import ApiConfig, mask

log = logging.getLogger("smtp2pulse.deliver")

# The platform's names for the encodings it accepts, to Python codec names.
_CODECS = {
    **dict.fromkeys(("UTF16BE", "UTF-16BE", "UCS-2BE", "UCS2BE"), "utf-16-be"),
    **dict.fromkeys(("UTF16LE", "UTF-16LE", "UCS-2LE", "UCS2LE"), "utf-16-le"),
    "CP1251": "cp1251", "UTF-8": "utf-8",
}
_TEXT_FIELDS = ("sent_text", "html_text")
_MAX_ERROR_TEXT = 300


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Literal["sent", "refused", "retry"]
    platform_id: str | None = None
    detail: str = ""
    retry_after: float | None = None


def encode_form(request: Mapping[str, str], token: str) -> bytes:
    """Form-encode a request; the text fields in the charset the request declares."""
    codec = _CODECS.get(request.get("charset", "UTF-8"), "utf-8")
    pairs = [("token", token), *request.items()]
    return "&".join(
        quote_plus(name) + "=" + quote_plus(
            value, encoding=codec if name in _TEXT_FIELDS else "utf-8", errors="replace")
        for name, value in pairs).encode("ascii")


def masked_request(request: Mapping[str, str], token: str) -> dict[str, str]:
    """The request as a person may see it: token masked."""
    return {"token": mask(token), **request}


def classify(status: int, body: bytes, headers: Mapping[str, str], now: float) -> Outcome:
    if status == 429 or status >= 500:
        return Outcome("retry", detail=f"HTTP {status}",
                       retry_after=retry_after_seconds(headers.get("retry-after"), now))
    try:
        reply = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        reply = None
    if isinstance(reply, dict):
        kind = reply.get("type")
        if kind == "success" and isinstance(reply.get("id"), str | int) and reply["id"] != "":
            return Outcome("sent", platform_id=str(reply["id"]))
        if kind == "error":
            return Outcome("refused", detail=_short(str(reply.get("msg", "")) or "error"))
    return Outcome("retry", detail=f"HTTP {status}, unrecognised reply: "
                                   f"{_short(body.decode('utf-8', 'replace'))!r}")


def retry_after_seconds(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_TEXT else text[:_MAX_ERROR_TEXT] + "…"


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
            return Outcome("retry", detail=f"{type(exc).__name__}: {_short(str(exc))}")
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
