"""The console's actions over plain HTTP, where a browser adds nothing: a POST without the CSRF
token, with a wrong one, with one made for another address, sent by another site, or from
outside http.allow_networks changes nothing (403); with the token from inside it is done and
written to the message's history with who. Also: settling an unconfirmed batch, the bulk retry
behind its confirmation, and pages of deliveries that hold every one once."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from gateway.app import Gateway
from gateway.config.loader import parse_config
from gateway.spool.states import State
from gateway.status.bill import Biller, DomainBill
from gateway.status.csrf import Tokens
from tests.conftest import Running, base_config, eventually, merge, text_message
from tests.fakeplatform import FakePlatform, Reply
from tests.status.test_page import HTTP, base

_CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')
FAILING: dict[str, Any] = {**HTTP, "spool": {"retry": ["1s"], "give_up_after": "1s"}}


async def page(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def post(url: str, form: dict[str, str], **headers: str) -> tuple[int, str, str]:
    """Status, body and Location (the redirect is not followed)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=form, headers=headers, allow_redirects=False) as response,
    ):
        return response.status, await response.text(), response.headers.get("Location", "")


async def token_of(url: str) -> str:
    status, html = await page(url)
    assert status == 200, html
    found = _CSRF.search(html)
    assert found is not None, "the page has a form with a token"
    return found.group(1)


async def failed_message(gw: Running, platform: FakePlatform) -> str:
    platform.default = Reply(status=503)
    queue_id = await gw.submit(text_message("Disk full"), "79001234567@sms.local")
    assert await gw.wait_final(queue_id) == ["failed"]
    return queue_id


async def history(gw: Running, queue_id: str) -> list[tuple[str, str]]:
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None
    return [(kind, text) for d in detail.deliveries for _, kind, text in d.events]


async def test_an_action_without_a_valid_token_or_from_another_site_changes_nothing(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway(FAILING)
    queue_id = await failed_message(gw, platform)
    url = base(gw) + f"/queue/{queue_id}/retry"
    before = await history(gw, queue_id)
    token = await token_of(base(gw) + f"/queue/{queue_id}")
    http = gw.gateway.config.http
    assert http is not None
    elsewhere = Tokens(http.callback_secret.reveal).token("10.9.9.9")
    for form, headers in (
        ({}, {}),  # no token
        ({"csrf": "0" * 64}, {}),  # a wrong one
        ({"csrf": elsewhere}, {}),  # one made for another client's address
        ({"csrf": token}, {"Origin": "https://evil.example"}),  # sent by another site
        ({"csrf": token}, {"Origin": "null"}),  # by a sandboxed frame
        ({"csrf": token}, {"Sec-Fetch-Site": "cross-site", "Origin": base(gw)}),
        ({"csrf": token}, {"Sec-Fetch-Site": "same-site"}),
    ):
        status, html, _ = await post(url, form, **headers)
        assert status == 403 and "Nothing was changed" in html, (form, headers)
    assert await history(gw, queue_id) == before
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None and detail.deliveries[0].state == State.FAILED

    # Behind a reverse proxy the Origin is the proxy's; the browser's Sec-Fetch-Site still
    # says the form is the page's own.
    proxied = {"Origin": "https://console.example", "Sec-Fetch-Site": "same-origin"}
    status, _, location = await post(url, {"csrf": token}, **proxied)
    assert status == 303 and location == f"/queue/{queue_id}?done=retry&n=1"
    assert ("retry", "requested from the console by 127.0.0.1") in await history(gw, queue_id)


async def test_no_action_from_outside_the_allowed_networks(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway(
        {**FAILING, "http": {"listen": "127.0.0.1:0", "allow_networks": ["10.0.0.0/8"]}}
    )
    queue_id = await failed_message(gw, platform)
    before = await history(gw, queue_id)
    http = gw.gateway.config.http
    assert http is not None
    # Even a token that would be good for this client: it is outside the operator's networks.
    token = Tokens(http.callback_secret.reveal).token("127.0.0.1")
    for action in ("retry", "drop", "settle"):
        status, html, _ = await post(base(gw) + f"/queue/{queue_id}/{action}", {"csrf": token})
        assert status == 403 and queue_id not in html
    status, _, _ = await post(base(gw) + "/retry-failed", {"csrf": token})
    assert status == 403
    assert await history(gw, queue_id) == before


async def test_drop_keeps_the_message_suppressed_with_who_dropped_it(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    platform.default = Reply(status=503)
    gw = await start_gateway({**HTTP, "spool": {"retry": ["1h"]}})
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")

    async def attempted() -> bool:
        return any(kind == "deferred" for kind, _ in await history(gw, queue_id))

    await eventually(attempted, every=0.02)
    token = await token_of(base(gw) + f"/queue/{queue_id}")
    status, _, location = await post(base(gw) + f"/queue/{queue_id}/drop", {"csrf": token})
    assert status == 303 and location.endswith("done=drop&n=1")
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None and detail.deliveries[0].state == State.SUPPRESSED
    assert detail.deliveries[0].last_error == "dropped from the console by 127.0.0.1"
    status, html = await page(base(gw) + location)
    assert "Dropped: 1 deliveries" in html and "dropped from the console by 127.0.0.1" in html
    assert 'action="/queue/' not in html  # nothing left to act on


async def test_an_unconfirmed_batch_is_settled_as_sent(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    # One slot and batches: the second message's two recipients go as one batch, whose reply
    # the gateway cannot read (as tests/test_queue_cli.py makes them).
    gw = await start_gateway(
        {**HTTP, "api": {"batch_size": 10, "max_concurrency": 1, "batch_wait": 0}}
    )
    platform.script = [Reply(delay=0.4), Reply(body="<html>accepted?</html>")]
    await gw.submit(text_message("first"), "79009999999@sms.local")
    await platform.wait_for(1)
    queue_id = await gw.submit(
        text_message("pair"), ["79001111111@sms.local", "79002222222@sms.local"]
    )

    async def unconfirmed() -> bool:
        detail = await gw.gateway.spool.show_message(queue_id)
        return detail is not None and all(d.state == "unconfirmed" for d in detail.deliveries)

    await eventually(unconfirmed, within=15, every=0.05)
    status, html = await page(base(gw) + "/")
    assert 'class="card attention" id="unconfirmed"' in html  # a person is needed
    status, html = await page(base(gw) + f"/queue/{queue_id}")
    assert "Settle unconfirmed as sent" in html
    token = await token_of(base(gw) + f"/queue/{queue_id}")
    status, _, location = await post(base(gw) + f"/queue/{queue_id}/settle", {"csrf": token})
    assert status == 303 and location.endswith("done=settle&n=2")
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None and [d.state for d in detail.deliveries] == ["sent", "sent"]
    assert (await history(gw, queue_id)).count(
        ("settled", "settled as sent from the console by 127.0.0.1")
    ) == 2
    assert len(platform.requests) == 2  # settled, not sent again
    status, html = await page(base(gw) + "/")
    assert 'class="card" id="unconfirmed"' in html  # the page counts afresh after an action


async def test_retry_every_failed_delivery_of_the_last_hour_after_a_confirmation(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway(FAILING)
    first = await failed_message(gw, platform)
    second = await failed_message(gw, platform)
    status, html = await page(base(gw) + "/retry-failed")
    assert status == 200 and '<b id="failed-count">2' in html
    assert first in html and second in html
    since = re.search(r'name="since" value="([0-9.]+)"', html)
    until = re.search(r'name="until" value="([0-9.]+)"', html)
    assert since is not None and until is not None
    form = {"csrf": await token_of(base(gw) + "/retry-failed")}
    form.update(since=since.group(1), until=until.group(1))
    status, _, _ = await post(base(gw) + "/retry-failed", {**form, "csrf": ""})
    assert status == 403
    platform.default = Reply()  # the platform is back
    requests = len(platform.requests)
    status, _, location = await post(base(gw) + "/retry-failed", form)
    assert status == 303 and location == "/?done=retry-failed&n=2"
    assert await gw.wait_final(first) == ["sent"] and await gw.wait_final(second) == ["sent"]
    assert len(platform.requests) == requests + 2
    detail = "retry of every failed delivery requested from the console by 127.0.0.1"
    assert ("retry", detail) in await history(gw, first)
    # The confirmed hour, not any other: a made-up window is refused.
    form.update(since=str(time.time() - 7200), until=str(time.time()))
    status, _, _ = await post(base(gw) + "/retry-failed", form)
    assert status == 400


async def test_pages_hold_every_delivery_once_newest_first(
    start_gateway: Callable[..., Awaitable[Running]],
) -> None:
    gw = await start_gateway({**HTTP, "smtp": {"max_recipients": 30}})
    for n in range(2):
        to = [f"7900100{n}{i:03d}@sms.local" for i in range(30)]
        await gw.submit(text_message(f"batch {n}"), to)
    seen: list[str] = []
    url = base(gw) + "/?domain=sms.local"
    pages = 0
    while url:
        status, html = await page(url)
        assert status == 200
        pages += 1
        rows = re.findall(r'<td class="wrap">(7900100\d{4})@sms\.local', html)
        seen += rows
        older = re.search(r'href="(/\?[^"]*before=[^"]*)" id="older"', html)
        url = base(gw) + older.group(1).replace("&amp;", "&") if older else ""
    assert pages == 2 and len(seen) == 60 and len(set(seen)) == 60


async def test_the_bill_counts_no_sms_parts_for_a_domain_that_is_not_sms(
    start_gateway: Callable[..., Awaitable[Running]],
) -> None:
    gw = await start_gateway(HTTP)
    mail = await gw.submit(text_message("Invoice", "x" * 400), "ivan=example.com@mail.local")
    sms = await gw.submit(text_message("Code", "x" * 400), "79001234567@sms.local")
    assert await gw.wait_final(mail) == ["sent"] and await gw.wait_final(sms) == ["sent"]
    status, html = await page(base(gw) + "/")
    assert status == 200
    bill = html.split('id="bill"', 1)[1].split("</table>", 1)[0]
    number = re.compile(r'<td class="n"[^>]*>([^<]*)</td>')  # (a phone's data-label beside)
    cells = {
        row.split("</th>", 1)[0].rsplit(">", 1)[-1]: number.findall(row)
        for row in bill.split("<tr")[2:]
    }
    assert cells["mail.local"][:3] == ["1", "1", "-"]  # messages, sent, SMS parts
    assert cells["sms.local"][:3] == ["1", "1", "3"]  # 400 x's are three parts


async def test_the_bill_counts_as_sent_only_what_the_platform_took_with_its_parts(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    """A delivery given up on (the platform never took it) is shown failed in the queue, but the
    bill neither counts it as sent nor has parts for it: sent and SMS parts are the same rows."""
    gw = await start_gateway(FAILING)
    await failed_message(gw, platform)
    platform.default = Reply()
    sent = await gw.submit(text_message("Code", "x" * 400), "79001234568@sms.local")
    assert await gw.wait_final(sent) == ["sent"]
    status, html = await page(base(gw) + "/")
    assert status == 200
    bill = html.split('id="bill"', 1)[1].split("</table>", 1)[0]
    assert '<th class="n" scope="col">gave up</th>' in bill
    number = re.compile(r'<td class="n"[^>]*>([^<]*)</td>')
    cells = {
        row.split("</th>", 1)[0].rsplit(">", 1)[-1]: number.findall(row)
        for row in bill.split("<tr")[2:]
    }
    # messages, sent, SMS parts, waiting, refused, gave up
    assert cells["sms.local"] == ["2", "1", "3", "0", "0", "1"]
    assert cells["all domains"] == ["2", "1", "3", "0", "0", "1"]


def bill_row(html: str, domain: str) -> list[int]:
    """A domain's bill row: messages, sent, SMS parts, waiting, refused (and any other column)."""
    bill = html.split('id="bill"', 1)[1].split("</table>", 1)[0]
    for row in bill.split("<tr")[2:]:
        if row.split("</th>", 1)[0].rsplit(">", 1)[-1] == domain:
            return [int(n) for n in re.findall(r'<td class="n"[^>]*>(\d+)</td>', row)]
    return []


async def test_sent_and_sms_parts_agree_on_every_page_under_smtp_load_on_postgresql(
    tmp_path: Path, platform: FakePlatform, pg_url: str
) -> None:
    """Deliveries are sent while the page is read again and again, on PostgreSQL (where each
    statement of a read has its own snapshot): every bill counts as many one-part texts sent as
    SMS parts, from the same rows at one moment."""
    data = merge(base_config(tmp_path / "unused.sqlite3", platform.base_url), HTTP)
    del data["spool"]["path"]
    data["spool"]["url"] = pg_url
    data["smtp"]["max_recipients"] = 30
    gateway = Gateway(parse_config(data, env={}))
    await gateway.start()
    try:
        await sent_while_read(Running(gateway), platform)
    finally:
        await gateway.stop()


async def sent_while_read(gw: Running, platform: FakePlatform) -> None:
    platform.default = Reply(delay=0.05)

    async def send() -> None:  # one message after another, each to ten: sent in many batches
        for n in range(40):
            to = [f"790020{n:02d}{i:03d}@sms.local" for i in range(10)]
            await gw.submit(text_message(f"Alert {n}"), to)
            await asyncio.sleep(0.02)

    sending = asyncio.create_task(send())
    # The page keeps its bill for SUMMARY_SECONDS: the biller it uses is asked directly, as
    # often as it can be, on the running gateway's spool.
    biller = Biller(gw.gateway.spool)
    seen: list[tuple[int, int]] = []

    async def all_sent() -> bool:
        bill = await biller.bill(time.time())
        [sms] = [d for d in bill.domains if d.domain == "sms.local"] or [DomainBill("sms.local")]
        seen.append((sms.sent, sms.parts))
        assert sms.parts == sms.sent <= sms.messages, (sms, seen)
        return sms.sent == 400

    await eventually(all_sent, 60.0, every=0.0)
    await sending
    assert len(set(seen)) > 10, seen  # counted again and again while sending
    status, html = await page(base(gw) + "/")
    assert status == 200
    row = bill_row(html, "sms.local")  # the page's bill (as old as SUMMARY_SECONDS at most)
    assert not row or row[1] == row[2] <= row[0], row
