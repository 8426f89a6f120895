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
from gateway.logs import Throttle
from gateway.spool.interface import SpoolInterface
from gateway.spool.media import EXTENSIONS, TYPES
from gateway.spool.rows import MessageDetail

log = logging.getLogger("smtp2pulse.status")

PREFIX = "/media/"
_QUEUE_ID = re.compile(r"[0-9A-F]{12,32}")
_NAME = re.compile(r"([0-9a-f]{32})\.([a-z]{3})")
# Not kept by caches on the way: a dropped or purged message's picture is gone at once. Never
# sniffed into anything but a picture, nor run as a page.
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Referrer-Policy": "no-referrer",
}


class MediaRoute:
    def __init__(self, config: Callable[[], Config], spool: SpoolInterface) -> None:
        self.config = config
        self.spool = spool
        self._refused_lines = Throttle()  # a flood of made-up URLs must not fill the log

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
            told, more = self._refused_lines.allow()
            if told:
                log.info(
                    "picture URL with a wrong signature refused (from %s)%s", request.remote, more
                )
            return _answer(403)
        found = await self.spool.picture(queue_id)
        if found is None or found[0] != TYPES[shape[2]]:
            return _answer(404)
        content_type, data = found
        # The operator's evidence that the platform came for it (or who else did).
        log.info(
            "queue_id=%s picture fetched by %s",
            queue_id,
            request.remote,
            extra={"queue_id": queue_id},
        )
        return web.Response(body=data, content_type=content_type, headers=_HEADERS)


def thumbnail_url(config: Config, detail: MessageDetail) -> str | None:
    """The picture's URL on this server (the status page's thumbnail), or None."""
    picture = detail.picture
    secret = config.http.callback_secret.reveal() if config.http is not None else ""
    if picture is None or picture.problem is not None or not secret:
        return None
    signature = media_signature(secret, detail.queue_id)
    return f"{PREFIX}{detail.queue_id}/{signature}.{EXTENSIONS[picture.content_type]}"


def _answer(status: int) -> web.Response:
    text = "forbidden\n" if status == 403 else "not found\n"
    return web.Response(text=text, status=status, headers={"Cache-Control": "no-store"})
