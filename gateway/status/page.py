"""The console (the status page): the queue at a glance, today's bill, the last 24 hours, a
search with paging, a message's page with its actions.

Server-rendered (Jinja2, autoescaped: subjects and addresses come from mail, and mail is written
by anyone) and free of script, which its CSP forbids: the chart is an SVG drawn here
(chart.py), the actions are plain POST forms with a CSRF token (csrf.py, console.py). It answers
only clients in http.allow_networks (the status server's guard) and shows what `queue list` and
`queue show` would, personal data masked when log.mask_personal_data is on. Nothing of the
config is shown, so no token can be.

The counts, the bill and the chart read every delivery of the day: they are made at most every
SUMMARY_SECONDS (and after each action) and shared by the pages asked for meanwhile, so a page
reloaded in a loop (or a dozen open) costs the spool one such read per interval, and the accept
path does not feel it; the page says the moment they were counted at.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import shown
from gateway.config.domains import SMS_TYPES
from gateway.config.model import Config
from gateway.config.recipients import shown_recipient
from gateway.message.limits import today
from gateway.privacy import mask_personal
from gateway.spool.console import ConsoleSearch
from gateway.spool.interface import SpoolInterface
from gateway.spool.rows import Overview
from gateway.spool.states import RETRYABLE, SHOWN, State
from gateway.status import chart as charts
from gateway.status.bill import NEAR, Bill, Biller, ErrorKind, error_kinds
from gateway.status.console import Console
from gateway.status.csrf import Tokens
from gateway.status.filters import age_html, ago, state_html
from gateway.status.media import thumbnail_url
from gateway.status.pace import Pace
from gateway.times import iso_time, local_time

if TYPE_CHECKING:
    import jinja2

PAGE = 50  # deliveries a page
ERRORS = 200  # the newest failed deliveries the error kinds are counted over
SEARCH_RATE, SEARCH_BURST = 1.0, 3  # searches a second, after a burst of 3
SUMMARY_SECONDS = 10.0  # how old the counts, the bill and the chart may be
MAX_QUERY = 320  # an address is at most 254 characters; more is not a search
# Queue ids are uppercase hex with a time prefix (spool.base.new_queue_id); others are looked up
# as recipients, senders or subject words.
_QUEUE_ID = re.compile(r"[0-9A-Fa-f]{12,32}")
_CURSOR = re.compile(r"([0-9A-F]{12,32})\.([0-9]{1,18})")
_DOMAIN = re.compile(r"[a-z0-9.-]{1,253}")
HEADERS = {
    "Cache-Control": "no-store",
    # Belt and braces: even an escaping slip could run nothing.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it a browser posts the forms with "Origin: null", which the CSRF
    # check (csrf.cross_site) cannot tell from a sandboxed frame elsewhere. Other sites still
    # learn nothing (the page links to none).
    "Referrer-Policy": "same-origin",
}


@dataclass(frozen=True, slots=True)
class Summary:
    """What the top of the page shows, all counted at one moment (so no two numbers disagree
    for having been counted seconds apart under load)."""

    at: float
    overview: Overview
    errors: list[ErrorKind]
    bill: Bill
    chart: charts.Chart


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
        iso=iso_time,
        ago=ago,
        age=age_html,
        state=state_html,
        recipient=shown_recipient,
        note=shown.platform_note,
        personal=personal,
        picture=shown.picture_text,
    )
    names = ("index.html", "message.html", "confirm.html", "refused.html", "send_anyway.html")
    return {name: env.get_template(name) for name in names}


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
        self.tokens = Tokens(self._secret)
        self.pace = Pace()  # one for every page of the console
        # A search of words reads every delivery until it has a page of them: fewer of those.
        self.search_pace = Pace(SEARCH_RATE, SEARCH_BURST)
        self.console = Console(
            spool,
            self.tokens,
            self._render,
            self._forget_summary,
            self.pace,
            lambda: today(self.config(), time.time()),
        )
        self._biller = Biller(spool)
        self._summary: Summary | None = None
        self._summary_lock = asyncio.Lock()

    def _secret(self) -> str:
        http = self.config().http
        return http.callback_secret.reveal() if http is not None else ""

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self.index)
        router.add_get("/queue/{queue_id}", self.message)
        self.console.add_routes(router)

    async def index(self, request: web.Request) -> web.Response:
        await self.pace.turn()
        query = request.query.get("q", "").strip()[:MAX_QUERY]
        state = request.query.get("state", "")
        state = state if state in SHOWN else ""
        domain = request.query.get("domain", "").strip().lower()
        domain = domain if _DOMAIN.fullmatch(domain) else ""
        cursor = _CURSOR.fullmatch(request.query.get("before", ""))
        if query:
            await self.search_pace.turn()
        if (
            query
            and not (state or domain or cursor)
            and _QUEUE_ID.fullmatch(query)
            and await self.spool.show_message(query.upper()) is not None
        ):
            raise web.HTTPSeeOther(f"/queue/{query.upper()}")
        search = ConsoleSearch(
            text=query or None,
            state=state or None,
            domain=domain or None,
            before=(cursor.group(1), int(cursor.group(2))) if cursor else None,
            limit=PAGE,
        )
        found = await self.spool.console_find(search)
        summary = await self._summaries()
        overview = summary.overview
        served = self.config().domains
        domains = sorted({*served, *(d.domain for d in summary.bill.domains)})
        last = found[-1].line if len(found) >= PAGE else None
        return await self._render(
            "index.html",
            request,
            query=query,
            state=state,
            domain=domain,
            domains=domains,
            not_sms={name for name, d in served.items() if d.type not in SMS_TYPES},
            paged=cursor is not None,
            found=found,
            older=None if last is None else f"{last.queue_id}.{last.delivery_id}",
            as_of=summary.at,
            overview=overview,
            waiting=sum(overview.by_state.get(s, 0) for s in ("queued", "sending")),
            errors=summary.errors,
            bill=summary.bill,
            near=NEAR,
            chart=summary.chart,
            states=SHOWN,
            ready=self.ready(),
            sending=self.sending(),
            done=self.console.done_note(request),
        )

    async def _summaries(self) -> Summary:
        async with self._summary_lock:  # one read for every page asked for meanwhile
            now = time.time()
            if self._summary is None or now - self._summary.at >= SUMMARY_SECONDS:
                overview = await self.spool.overview(errors=ERRORS)
                config = self.config()
                # The limits' own counts, as /metrics' budget gauges read them.
                limits = today(config, now)
                used = await self.spool.budget_used(limits) if limits else {}
                sms = frozenset(n for n, d in config.domains.items() if d.type in SMS_TYPES)
                self._summary = Summary(
                    now,
                    overview,
                    # A held one's last_error is a limit's, not the platform's: the bill says it.
                    error_kinds(e for e in overview.recent_errors if e.state != State.HELD),
                    await self._biller.bill(now, limits, used, sms),
                    charts.chart(await self.spool.console_hourly()),
                )
            return self._summary

    def _forget_summary(self) -> None:
        """After an action: the next page counts afresh."""
        self._summary = None

    async def message(self, request: web.Request) -> web.Response:
        await self.pace.turn()
        queue_id = request.match_info["queue_id"]
        detail = await self.spool.show_message(queue_id)
        if detail is None:
            return await self._render(
                "message.html", request, status=404, queue_id=queue_id, detail=None
            )
        deliveries = [(d, shown.shown_state(d), shown.next_attempt(d)) for d in detail.deliveries]
        states = [d.state for d in detail.deliveries]
        routes = sorted({t for d in detail.deliveries for _, k, t in d.events if k == "routed"})
        return await self._render(
            "message.html",
            request,
            queue_id=queue_id,
            detail=detail,
            subject=await self.spool.console_subject(queue_id) or "",
            routes=routes,
            deliveries=deliveries,
            # What the actions would change (spool/console.py, queue_view.retry_message).
            can_retry=any(s in RETRYABLE for s in states),
            can_drop=any(s in (State.QUEUED, State.UNCONFIRMED, State.HELD) for s in states),
            can_settle=State.UNCONFIRMED in states,
            can_release=State.HELD in states,
            done=self.console.done_note(request),
            picture_url=thumbnail_url(self.config(), detail),
        )

    async def _render(
        self, name: str, request: web.Request | None = None, status: int = 200, **values: Any
    ) -> web.Response:
        if self._loaded is None:
            # Compiling reads the template files: off the event loop, once.
            self._loaded = await asyncio.to_thread(_templates)
        config = self.config()
        html = self._loaded[name].render(
            mask=config.log_mask_personal,
            dry_run=config.api.dry_run,
            platform_error=self.platform_error(),
            # The forms' token, for the address that asked (csrf.py).
            csrf=self.tokens.token(request.remote or "") if request is not None else "",
            now=time.time(),
            **values,
        )
        return web.Response(text=html, status=status, content_type="text/html", headers=HEADERS)
