"""A fast fake Pulse platform for the bench, in its own process.

POST /api/v1/bulk/send-message answers `{"type": "success", "id": "<n>"}` after --latency
seconds, or 503 for a --fail fraction of requests (those count as not delivered: the gateway
must try again). Each successful request is recorded by its key, `<marker> <sent_to>`, where the
marker is the first word of `sent_text` (the gateway's default template puts the Subject, which
the load generator sets to `bench-<run>-<n>`, on the first line).

GET /stats        small JSON of counters, cheap enough to poll
GET /deliveries   {"deliveries": {key: [count, first_arrival, last_arrival]}} (time.time())

It runs in its own process so that its event loop does not share a core's time slices with the
load generator's; it prints its port on the first line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import time
from urllib.parse import parse_qs

from aiohttp import web
from lifetime import until_stopped

SEND_PATH = "/api/v1/bulk/send-message"


class Platform:
    def __init__(self, latency: float, fail: float, seed: int) -> None:
        self.latency = latency
        self.fail = fail
        self.rng = random.Random(seed)     # seeded: the same failure pattern every round
        self.ids = itertools.count(1)
        self.requests = 0
        self.failed = 0
        self.delivered = 0                 # successful requests, duplicates included
        self.unmarked = 0                  # successful requests without a bench marker
        self.deliveries: dict[str, list[float]] = {}   # key -> [count, first, last]
        self.last_arrival = 0.0

    async def send_message(self, request: web.Request) -> web.Response:
        arrived = time.time()
        raw = await request.read()
        self.requests += 1
        if self.fail and self.rng.random() < self.fail:
            self.failed += 1
            await self._wait()
            return web.Response(status=503, text="Service Unavailable")
        self._record(delivery_key(raw), arrived)
        await self._wait()
        return web.json_response({"type": "success", "id": str(next(self.ids))})

    async def _wait(self) -> None:
        if self.latency:
            await asyncio.sleep(self.latency)

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

    async def stats(self, _request: web.Request) -> web.Response:
        return web.json_response({
            "requests": self.requests, "failed": self.failed, "delivered": self.delivered,
            "unique": len(self.deliveries), "unmarked": self.unmarked,
            "last_arrival": self.last_arrival})

    async def dump(self, _request: web.Request) -> web.Response:
        return web.json_response({"deliveries": self.deliveries})


def delivery_key(raw: bytes) -> str | None:
    """`<marker> <sent_to>` from a form-encoded request, or None if it carries no marker."""
    form = parse_qs(raw.decode("ascii", "replace"), encoding="utf-8", errors="replace")
    text = form.get("sent_text", [""])[0]
    words = text.split(None, 1)
    if not words or not words[0].startswith("bench-"):
        return None
    return f"{words[0]} {form.get('sent_to', [''])[0]}"


async def serve(port: int, platform: Platform, max_seconds: float) -> None:
    app = web.Application()
    app.router.add_post(SEND_PATH, platform.send_message)
    app.router.add_get("/stats", platform.stats)
    app.router.add_get("/deliveries", platform.dump)
    runner = web.AppRunner(app, access_log=None)   # a log line per request would cost more
    await runner.setup()                            # than answering it
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    try:
        await until_stopped(max_seconds)
    finally:
        await runner.cleanup()


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
