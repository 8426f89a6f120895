"""The console's actions: retry, drop, settle or release a message; send its held deliveries
over their limit (behind a confirmation page); retry every delivery that failed in the last
hour (after a platform outage), behind a confirmation page.

A held delivery (over a domain's limit) is never sent by a retry: "release" makes it due now,
and the held watch sends it only if its limits have room (else holds it again); "send anyway"
is the one way past a limit, a separate button that asks first.

Each is a POST form (no script) carrying a CSRF token (csrf.py), from a client in
http.allow_networks (the status server's guard turns the others away before this sees them).
Without a valid token, or sent by another site, a POST is answered 403 and changes nothing.
What is done is written into each changed delivery's history with the client's address
(spool/console.py) and logged; the browser is then sent back to a page (303) that says so.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from aiohttp import web

from gateway.spool.console import Action
from gateway.spool.interface import SpoolInterface
from gateway.spool.rows import DayLimits
from gateway.spool.states import State
from gateway.status.csrf import Tokens, cross_site
from gateway.status.pace import Pace

log = logging.getLogger("smtp2pulse.status")

RECENT_FAILED = 3600.0  # "the last hour" of the bulk retry
LISTED = 200  # failed deliveries listed on the confirmation page
_QUEUE_ID = re.compile(r"[0-9A-Za-z]{1,64}")
_ACTIONS: dict[str, Action] = {
    "retry": "retry",
    "drop": "drop",
    "settle": "settle",
    "release": "release",
}
# What the page says after an action (a fixed text per action: nothing of the request is shown).
DONE = {
    "retry": "Retried: {n} deliveries are due now.",
    "drop": "Dropped: {n} deliveries will not be sent (kept as suppressed, reason dropped).",
    "settle": "Settled as sent: {n} unconfirmed deliveries.",
    "release": "Released: the limits of {n} held deliveries are looked at again now; each is"
    " sent if there is room, else held again.",
    "send-anyway": "Sent anyway: {n} held deliveries are due now, over their limit.",
    "retry-failed": "Retried {n} deliveries that failed in the last hour.",
}
Render = Callable[..., Awaitable[web.Response]]


class Console:
    def __init__(
        self,
        spool: SpoolInterface,
        tokens: Tokens,
        render: Render,
        changed: Callable[[], None],
        pace: Pace,
        limits: Callable[[], Mapping[str, DayLimits]],
    ) -> None:
        self.spool = spool
        self.tokens = tokens
        self.render = render
        self.changed = changed  # the page's counts are out of date
        self.pace = pace
        self.limits = limits  # the domains' limits today (gateway.message.limits.today)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/queue/{queue_id}/send-anyway", self.confirm_send_anyway)
        router.add_post("/queue/{queue_id}/send-anyway", self.send_anyway)
        router.add_post("/queue/{queue_id}/{action}", self.act)
        router.add_get("/retry-failed", self.confirm)
        router.add_post("/retry-failed", self.retry_failed)

    @staticmethod
    def done_note(request: web.Request) -> str:
        note = DONE.get(request.query.get("done", ""))
        count = request.query.get("n", "")
        return note.format(n=int(count)) if note and count.isascii() and count.isdigit() else ""

    async def _checked_form(self, request: web.Request) -> dict[str, str] | web.Response:
        """The POST's form, or the 403 page when it may not act."""
        if cross_site(request.headers, request.host):
            return await self._refused(request, "it was sent by another site")
        form = cast(dict[str, Any], dict(await request.post()))
        token = form.get("csrf")
        if not isinstance(token, str) or not self.tokens.valid(token, request.remote or ""):
            return await self._refused(
                request, "its form carries no valid token (reload the page and try again)"
            )
        return {k: v for k, v in form.items() if isinstance(v, str)}

    async def _refused(self, request: web.Request, why: str) -> web.Response:
        log.warning("console action refused from %s: %s", request.remote, why)
        return await self.render("refused.html", request, status=403, why=why)

    async def act(self, request: web.Request) -> web.Response:
        queue_id = request.match_info["queue_id"]
        action = _ACTIONS.get(request.match_info["action"])
        if action is None or not _QUEUE_ID.fullmatch(queue_id):
            raise web.HTTPNotFound()
        form = await self._checked_form(request)
        if isinstance(form, web.Response):
            return form
        who = request.remote or "?"
        changed = await self.spool.console_act(action, queue_id, who)
        self.changed()
        if changed is None:
            raise web.HTTPNotFound()
        log.info(
            "queue_id=%s %s from the console by %s: %d deliveries",
            queue_id,
            action,
            who,
            changed,
            extra={"queue_id": queue_id},
        )
        raise web.HTTPSeeOther(f"/queue/{queue_id}?done={action}&n={changed}")

    async def confirm(self, request: web.Request) -> web.Response:
        await self.pace.turn()
        until = time.time()
        since = until - RECENT_FAILED
        lines = await self.spool.console_failed(since, until, LISTED)
        return await self.render(
            "confirm.html", request, lines=lines, since=since, until=until, limit=LISTED
        )

    async def retry_failed(self, request: web.Request) -> web.Response:
        form = await self._checked_form(request)
        if isinstance(form, web.Response):
            return form
        now = time.time()
        try:
            # The hour the confirmation page showed, not a later one: what was confirmed.
            since, until = float(form.get("since", "")), float(form.get("until", ""))
        except ValueError:
            raise web.HTTPBadRequest(text="since and until are numbers") from None
        hour = now - 2 * RECENT_FAILED <= since <= until <= now and until - since <= RECENT_FAILED
        if not hour:
            raise web.HTTPBadRequest(text="since and until are the confirmed hour")
        who = request.remote or "?"
        changed = await self.spool.console_retry_failed(since, until, who)
        self.changed()
        log.info("retry of %d failed deliveries from the console by %s", changed, who)
        raise web.HTTPSeeOther(f"/?done=retry-failed&n={changed}")

    async def confirm_send_anyway(self, request: web.Request) -> web.Response:
        await self.pace.turn()
        queue_id = request.match_info["queue_id"]
        if not _QUEUE_ID.fullmatch(queue_id):
            raise web.HTTPNotFound()
        detail = await self.spool.show_message(queue_id)
        if detail is None:
            raise web.HTTPNotFound()
        held = [d for d in detail.deliveries if d.state == State.HELD]
        return await self.render("send_anyway.html", request, queue_id=queue_id, held=held)

    async def send_anyway(self, request: web.Request) -> web.Response:
        queue_id = request.match_info["queue_id"]
        if not _QUEUE_ID.fullmatch(queue_id):
            raise web.HTTPNotFound()
        form = await self._checked_form(request)
        if isinstance(form, web.Response):
            return form
        if form.get("confirm") != "yes":
            raise web.HTTPBadRequest(text="confirm on the page that asks first")
        who = request.remote or "?"
        changed = await self.spool.console_send_anyway(queue_id, who, self.limits())
        self.changed()
        if changed is None:
            raise web.HTTPNotFound()
        log.warning(
            "queue_id=%s sent over its limit from the console by %s: %d deliveries",
            queue_id,
            who,
            changed,
            extra={"queue_id": queue_id},
        )
        raise web.HTTPSeeOther(f"/queue/{queue_id}?done=send-anyway&n={changed}")
