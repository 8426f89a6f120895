"""GET /media/QUEUE_ID/SIGNATURE.EXT: a message's picture, for the platform that sends it on.

Open to anyone (the platform fetches from its own servers, outside http.allow_networks): what
guards a picture is its URL's signature (gateway.delivery.signing.media_signature), made with
the callback secret, which only the gateways of one spool know. A URL of the wrong shape or for
a message without a picture (never had one, or purged) is 404, a wrong signature 403; neither
says more than that. The bytes are the re-encoded picture (gateway.message.images), served from
the spool, so any gateway of one PostgreSQL database serves any message's picture.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable

from aiohttp import web

from gateway.config.model import Config
from gateway.delivery.signing import media_signature
from gateway.spool.interface import SpoolInterface
from gateway.spool.media import TYPES

log = logging.getLogger("smtp2pulse.status")

PREFIX = "/media/"
_QUEUE_ID = re.compile(r"[0-9A-F]{12,32}")
_NAME = re.compile(r"([0-9a-f]{32})\.([a-z]{3})")
# The platform may fetch again (each messenger, a retry): kept a day by caches on the way, but
# only private ones, and never sniffed into anything but a picture.
_HEADERS = {
    "Cache-Control": "private, max-age=86400",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Referrer-Policy": "no-referrer",
}


class MediaRoute:
    def __init__(self, config: Callable[[], Config], spool: SpoolInterface) -> None:
        self.config = config
        self.spool = spool

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get(PREFIX + "{queue_id}/{name}", self.picture)  # HEAD too

    def serves(self, request: web.Request) -> bool:
        """Whether the request was routed here (by the route aiohttp matched, not by the path's
        text, which a `..` could make say /media/ and mean another page)."""
        return request.match_info.route.handler == self.picture

    async def picture(self, request: web.Request) -> web.Response:
        queue_id, name = request.match_info["queue_id"], request.match_info["name"]
        shape = _NAME.fullmatch(name)
        if not _QUEUE_ID.fullmatch(queue_id) or shape is None or shape[2] not in TYPES:
            return _answer(404)
        http = self.config().http
        secret = http.callback_secret.reveal() if http is not None else ""
        if not secret or not hmac.compare_digest(media_signature(secret, queue_id), shape[1]):
            log.info("picture URL with a wrong signature refused (from %s)", request.remote)
            return _answer(403)
        found = await self.spool.picture(queue_id)
        if found is None or found[0] != TYPES[shape[2]]:
            return _answer(404)
        content_type, data = found
        return web.Response(body=data, content_type=content_type, headers=_HEADERS)


def _answer(status: int) -> web.Response:
    text = "forbidden\n" if status == 403 else "not found\n"
    return web.Response(text=text, status=status, headers={"Cache-Control": "no-store"})
