"""The HTTP side (aiohttp, in the daemon's own loop): health, metrics, callbacks, history."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from urllib.parse import parse_qsl

from aiohttp import web

from gateway.config.model import Config, HttpConfig, Listener
from gateway.config.networks import allowed
from gateway.errors import GatewayError
from gateway.logs import Throttle
from gateway.spool.interface import SpoolInterface
from gateway.spool.states import State
from gateway.status import callbacks as tracking
from gateway.status.budget_gauges import budget_gauges
from gateway.status.gate import IDLE_TIMEOUT, Gate
from gateway.status.media import MediaRoute
from gateway.status.metrics import CONTENT_TYPE, Metrics
from gateway.status.page import StatusPage

log = logging.getLogger("smtp2pulse.status")

HEALTH_PROBE_SECONDS = 2.0
# A callback is a handful of short fields; anything bigger is not the platform.
MAX_CALLBACK_BODY = 8 * 1024
MAX_STATUS = 64
MAX_PLATFORM_ID = 128
# What callback_url signs: a delivery id (a 64-bit SQLite rowid, where 18 digits always fit)
# and a queue id; ASCII only (str.isdigit takes "²", which int() refuses).
_ID_DIGITS = re.compile(r"[0-9]{1,18}")
_QUEUE_ID = re.compile(r"[0-9A-Za-z]{1,64}")


class StatusServer:
    def __init__(
        self,
        listen: Listener,
        config: Callable[[], Config],
        spool: SpoolInterface,
        metrics: Metrics,
        ready: Callable[[], bool],
        not_sending: Callable[[], str | None],
        on_failed_status: Callable[[int], Awaitable[None]],
    ) -> None:
        self.listen = listen  # the socket stays; everything else follows a reload
        self.config = config
        self.spool = spool
        self.metrics = metrics
        self.ready = ready
        self.not_sending = not_sending  # why nothing leaves now; None when it does
        self.on_failed_status = on_failed_status
        self._refused_lines = Throttle()  # each is counted in /metrics; the log needs a few
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.gate: Gate | None = None
        self._media = MediaRoute(config, spool)

    async def start(self) -> None:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_route("GET", "/callback", self._callback)
        app.router.add_route("POST", "/callback", self._callback)
        app.router.add_get("/messages/{queue_id}", self._message)
        self._media.add_routes(app.router)
        StatusPage(
            self.config,
            self.spool,
            self.ready,
            lambda: self.not_sending() is None,
            lambda: self.metrics.platform_error,
        ).add_routes(app.router)
        # aiohttp's own timer closes a connection idle this long, from its start (see
        # gateway.status.gate, which caps how many there are).
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=IDLE_TIMEOUT
        )
        await self._runner.setup()
        assert self._runner.server is not None
        self.gate = Gate(self._runner.server, ipv6_prefix=self.config().smtp.ipv6_prefix)
        # Not web.TCPSite: it hands connections to aiohttp directly, past any cap.
        self._server = await asyncio.get_running_loop().create_server(
            self.gate, self.listen.host, self.listen.port, reuse_address=True
        )
        log.info(
            "HTTP status listening on %s",
            ", ".join(f"{host}:{port}" for host, port in self.addresses),
        )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [
            (str(sock.getsockname()[0]), int(sock.getsockname()[1]))
            for sock in self._server.sockets
        ]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # Metrics, message history and the page are for the operator's networks only; a
        # picture is fetched by the platform, and guarded by its URL's signature.
        if request.path in ("/healthz", "/callback") or self._media.serves(request):
            return await handler(request)
        if not allowed(request.remote, self._http().allow_networks):
            return web.json_response({"error": "forbidden"}, status=403)
        return await handler(request)

    def _http(self) -> HttpConfig:
        http = self.config().http
        assert http is not None, "the status server runs only with an http section"
        return http

    async def _healthz(self, request: web.Request) -> web.Response:
        # A dry run is healthy but sends nothing: said, so a monitor can tell it from production.
        dry = {"dry_run": True} if self.config().api.dry_run else {}
        if not self.ready():
            return web.json_response(
                {**dry, "status": "unavailable", "reason": "SMTP listeners are not bound"},
                status=503,
            )
        stalled = self.not_sending()
        if stalled is not None:
            # Mail is still accepted and kept, but nothing leaves until it is back.
            return web.json_response(
                {**dry, "status": "unavailable", "reason": stalled}, status=503
            )
        try:
            async with asyncio.timeout(HEALTH_PROBE_SECONDS):
                await tracking.probe_writable(self.spool)
        except (GatewayError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            return web.json_response(
                {**dry, "status": "unavailable", "reason": f"spool is not writable: {reason}"},
                status=503,
            )
        # Still ready (mail is taken and kept) in both cases below: these are for a person.
        report: dict[str, object] = {**dry, "status": "ok"}
        if self.metrics.platform_error:
            report["platform_error"] = self.metrics.platform_error
        unconfirmed = await self.spool.unconfirmed()
        if unconfirmed:
            report.update(
                {
                    "unconfirmed": unconfirmed,
                    "detail": (
                        f"{unconfirmed} deliveries have an unknown outcome (the platform's reply"
                        " neither confirmed nor refused them): see `smtp2pulse queue list --state"
                        " unconfirmed`, then queue retry or queue drop"
                    ),
                }
            )
        return web.json_response(report)

    async def _metrics(self, request: web.Request) -> web.Response:
        stats = await tracking.spool_stats(self.spool)
        for state in State:
            self.metrics.spool_depth.labels(state).set(stats.by_state.get(state, 0))
        self.metrics.oldest_queued.set(stats.oldest_pending_age)
        await budget_gauges(self.metrics, self.spool, self.config())
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def _callback(self, request: web.Request) -> web.Response:
        secret = self._http().callback_secret.reveal()
        query = request.query
        if "sig" in query:
            # The URL we made carries the signature: an unsigned body is never read.
            refusal = self._refusal(
                request, query.get("d", ""), query.get("q", ""), query.get("sig", ""), secret
            )
            if refusal is not None:
                return refusal
        params = dict(query)
        if request.method == "POST":
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):  # a body trickled in for ever
                    body = await _small_body(request)
            except TimeoutError:
                log.warning(
                    "callback from %s refused: its body took over %.0fs",
                    request.remote,
                    IDLE_TIMEOUT,
                )
                return web.json_response({"error": "body too slow"}, status=408)
            if body is None:
                log.warning(
                    "callback from %s refused: a body over %d bytes",
                    request.remote,
                    MAX_CALLBACK_BODY,
                )
                return web.json_response({"error": "body too large"}, status=413)
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        delivery, queue_id = params.get("d", ""), params.get("q", "")
        refusal = self._refusal(request, delivery, queue_id, params.get("sig", ""), secret)
        if refusal is not None:
            return refusal
        # Kept short: stored and shown verbatim, and a real status is a word or a code.
        status = params.get("status", "")[:MAX_STATUS]
        platform_id = params.get("id", "")[:MAX_PLATFORM_ID]
        result, meaning = await tracking.record_status(
            self.spool, int(delivery), queue_id, platform_id, status
        )
        self.metrics.callbacks.labels(result).inc()
        log.info(
            "queue_id=%s delivery=%s status=%r (%s) %s",
            queue_id,
            delivery,
            status,
            meaning,
            result,
            extra={"queue_id": queue_id},
        )
        if result == "recorded" and meaning == "failed":
            await self.on_failed_status(int(delivery))
        # 200 even for a delivery we no longer know: the platform would only retry in vain.
        return web.json_response({"result": result})

    def _refusal(
        self, request: web.Request, delivery: str, queue_id: str, signature: str, secret: str
    ) -> web.Response | None:
        """400 for ids of a shape we never sign, 403 for a wrong signature, else None."""
        if not _ID_DIGITS.fullmatch(delivery) or not _QUEUE_ID.fullmatch(queue_id):
            self.metrics.callbacks.labels("malformed").inc()
            told, more = self._refused_lines.allow()
            if told:
                log.warning("malformed callback from %s refused%s", request.remote, more)
            return web.json_response({"error": "bad d or q"}, status=400)
        if not tracking.verify(secret, int(delivery), queue_id, signature):
            self.metrics.callbacks.labels("forged").inc()
            told, more = self._refused_lines.allow()
            if told:
                log.warning("forged or unsigned callback from %s refused%s", request.remote, more)
            return web.json_response({"error": "forbidden"}, status=403)
        return None

    async def _message(self, request: web.Request) -> web.Response:
        detail = await self.spool.show_message(request.match_info["queue_id"])
        if detail is None:
            return web.json_response({"error": "no such message"}, status=404)
        return web.json_response(asdict(detail))


async def _small_body(request: web.Request) -> bytes | None:
    """The body, or None past MAX_CALLBACK_BODY: judged by Content-Length before reading a
    byte, and counted while reading one sent without it."""
    if request.content_length is not None and request.content_length > MAX_CALLBACK_BODY:
        return None
    data = bytearray()
    while chunk := await request.content.read(MAX_CALLBACK_BODY + 1 - len(data)):
        data += chunk
        if len(data) > MAX_CALLBACK_BODY:
            return None
    return bytes(data)
