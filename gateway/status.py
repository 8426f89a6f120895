"""The HTTP side (aiohttp, in the daemon's own loop): health, metrics, callbacks, history."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from aiohttp import web

from gateway import admin, tracking
from gateway.config import Config, HttpConfig, Listener
from gateway.errors import GatewayError
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.networks import allowed
from gateway.spool import Spool

log = logging.getLogger("smtp2pulse.status")

HEALTH_PROBE_SECONDS = 2.0


class StatusServer:
    def __init__(self, listen: Listener, config: Callable[[], Config], spool: Spool,
                 metrics: Metrics, ready: Callable[[], bool], sending: Callable[[], bool],
                 on_failed_status: Callable[[int], Awaitable[None]]) -> None:
        self.listen = listen     # the socket stays; everything else follows a reload
        self.config = config
        self.spool = spool
        self.metrics = metrics
        self.ready = ready
        self.sending = sending
        self.on_failed_status = on_failed_status
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_route("GET", "/callback", self._callback)
        app.router.add_route("POST", "/callback", self._callback)
        app.router.add_get("/messages/{queue_id}", self._message)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.listen.host, self.listen.port,
                           reuse_address=True)
        await site.start()
        log.info("HTTP status listening on %s", ", ".join(
            f"{host}:{port}" for host, port in self.addresses))

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._runner is None:
            return []
        return [(str(address[0]), int(address[1])) for address in self._runner.addresses]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        # Metrics and message history are for the operator's networks only.
        if request.path in ("/healthz", "/callback"):
            return await handler(request)
        if not allowed(request.remote, self._http().allow_networks):
            return web.json_response({"error": "forbidden"}, status=403)
        return await handler(request)

    def _http(self) -> HttpConfig:
        http = self.config().http
        assert http is not None, "the status server runs only with an http section"
        return http

    async def _healthz(self, request: web.Request) -> web.Response:
        if not self.ready():
            return web.json_response({"status": "unavailable",
                                      "reason": "SMTP listeners are not bound"}, status=503)
        if not self.sending():
            # Mail is still accepted and kept, but nothing leaves until it is back.
            return web.json_response({"status": "unavailable",
                                      "reason": "sender process is not running"}, status=503)
        try:
            async with asyncio.timeout(HEALTH_PROBE_SECONDS):
                await tracking.probe_writable(self.spool)
        except (GatewayError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            return web.json_response({"status": "unavailable",
                                      "reason": f"spool is not writable: {reason}"}, status=503)
        return web.json_response({"status": "ok"})

    async def _metrics(self, request: web.Request) -> web.Response:
        stats = await tracking.spool_stats(self.spool)
        for state in ("queued", "sending", "sent", "refused", "failed"):
            self.metrics.spool_depth.labels(state).set(stats.by_state.get(state, 0))
        self.metrics.oldest_queued.set(stats.oldest_pending_age)
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE})

    async def _callback(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.post()).items()})
        delivery, queue_id, signature = params.get("d", ""), params.get("q", ""), \
            params.get("sig", "")
        secret = self._http().callback_secret.reveal()
        if not delivery.isdigit() or not tracking.verify(secret, int(delivery), queue_id,
                                                         signature):
            self.metrics.callbacks.labels("forged").inc()
            log.warning("forged or unsigned callback from %s refused", request.remote)
            return web.json_response({"error": "forbidden"}, status=403)
        status = params.get("status", "")
        result, meaning = await tracking.record_status(
            self.spool, int(delivery), queue_id, params.get("id", ""), status)
        self.metrics.callbacks.labels(result).inc()
        log.info("queue_id=%s delivery=%s status=%r (%s) %s", queue_id, delivery, status,
                 meaning, result, extra={"queue_id": queue_id})
        if result == "recorded" and meaning == "failed":
            await self.on_failed_status(int(delivery))
        # 200 even for a delivery we no longer know: the platform would only retry in vain.
        return web.json_response({"result": result})

    async def _message(self, request: web.Request) -> web.Response:
        detail = await admin.show_message(self.spool, request.match_info["queue_id"])
        if detail is None:
            return web.json_response({"error": "no such message"}, status=404)
        return web.json_response(asdict(detail))
