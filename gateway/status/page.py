"""The status page: the queue at a glance, recent deliveries, a search, a message's history.

Server-rendered (Jinja2, autoescaped: subjects and addresses come from mail, and mail is written
by anyone) and usable without JavaScript. It answers only clients in http.allow_networks (the
status server's guard) and shows what `queue list` and `queue show` would, personal data masked
when log.mask_personal_data is on. Nothing of the config is shown, so no token can be.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import shown
from gateway.config.model import Config
from gateway.config.recipients import shown_recipient
from gateway.privacy import mask_personal
from gateway.spool.interface import SpoolInterface
from gateway.spool.rows import Search
from gateway.spool.states import SHOWN
from gateway.status.media import thumbnail_url
from gateway.times import local_time

if TYPE_CHECKING:
    import jinja2

RECENT = 50
FOUND = 200
MAX_QUERY = 320  # an address is at most 254 characters; more is not a search
# Queue ids are uppercase hex with a time prefix (spool.base.new_queue_id); others are looked up
# as recipients.
_QUEUE_ID = re.compile(r"[0-9A-Fa-f]{12,32}")


def _templates() -> dict[str, jinja2.Template]:
    import jinja2  # here: its memory is paid only by a daemon whose page is opened

    @jinja2.pass_context
    def personal(context: jinja2.runtime.Context, text: object) -> str:
        value = "" if text is None else str(text)
        return mask_personal(value) if context["mask"] else value

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gateway.status", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=local_time,
        recipient=shown_recipient,
        note=shown.platform_note,
        personal=personal,
        picture=shown.picture_text,
    )
    return {name: env.get_template(name) for name in ("index.html", "message.html")}


class StatusPage:
    def __init__(
        self,
        config: Callable[[], Config],
        spool: SpoolInterface,
        ready: Callable[[], bool],
        sending: Callable[[], bool],
        platform_error: Callable[[], str],
    ) -> None:
        self.config = config
        self.spool = spool
        self.ready = ready
        self.sending = sending
        self.platform_error = platform_error  # the platform says our config is wrong
        self._loaded: dict[str, jinja2.Template] | None = None

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self.index)
        router.add_get("/queue/{queue_id}", self.message)

    async def index(self, request: web.Request) -> web.Response:
        query = request.query.get("q", "").strip()[:MAX_QUERY]
        if query:
            if (
                _QUEUE_ID.fullmatch(query)
                and await self.spool.show_message(query.upper()) is not None
            ):
                raise web.HTTPSeeOther(f"/queue/{query.upper()}")
            lines = await self.spool.find_deliveries(Search(to=query, limit=FOUND))
        else:
            lines = await self.spool.find_deliveries(Search(limit=RECENT))
        return await self._render(
            "index.html",
            query=query,
            lines=lines,
            overview=await self.spool.overview(),
            states=SHOWN,
            ready=self.ready(),
            sending=self.sending(),
            limit=FOUND if query else RECENT,
        )

    async def message(self, request: web.Request) -> web.Response:
        queue_id = request.match_info["queue_id"]
        detail = await self.spool.show_message(queue_id)
        if detail is None:
            return await self._render("message.html", status=404, queue_id=queue_id, detail=None)
        deliveries = [(d, shown.shown_state(d), shown.next_attempt(d)) for d in detail.deliveries]
        return await self._render(
            "message.html",
            queue_id=queue_id,
            detail=detail,
            deliveries=deliveries,
            picture_url=thumbnail_url(self.config(), detail),
        )

    async def _render(self, name: str, status: int = 200, **values: Any) -> web.Response:
        if self._loaded is None:
            # Compiling reads the template files: off the event loop, once.
            self._loaded = await asyncio.to_thread(_templates)
        config = self.config()
        html = self._loaded[name].render(
            mask=config.log_mask_personal,
            dry_run=config.api.dry_run,
            platform_error=self.platform_error(),
            **values,
        )
        return web.Response(
            text=html,
            status=status,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                # Belt and braces: even an escaping slip could run nothing.
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                "img-src 'self'; form-action 'self'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )
