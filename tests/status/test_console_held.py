"""The console with limits, repeats and pictures (issue 35's second round), over real SMTP to a
running gateway and in Debian's headless chromium: the bill against a domain's limits with the
numbers /metrics' budget gauges show, held deliveries with why and until when, suppressed ones
by reason, the chart's held series, the state filter `held`; a held message released within
its limits (still held: a retry never bypasses a limit), sent anyway after a confirmation
(counted against the limit, its history saying who), or dropped; a picture marked in the
listing; and the new parts still legible, free of script, and within a phone's width."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

from playwright.async_api import Browser, Page

from gateway.spool.states import State
from tests.conftest import Running, eventually, text_message
from tests.fakeplatform import FakePlatform, Reply
from tests.pictures import camera_jpeg, with_attachment
from tests.status.test_console import history, page, post, token_of
from tests.status.test_console_page import CONTRAST, OVERFLOW, PHONE, no_script
from tests.status.test_page import base, watched_page

LIMITED: dict[str, Any] = {
    "http": {"listen": "127.0.0.1:0"},
    "domains": {
        "sms.local": {
            "type": "sms",
            "sender": "MyShop",
            "repeat_window": "10m",
            "limits": {"messages_per_day": 3, "parts_per_day": 5, "per_recipient": "5/1h"},
        }
    },
}


async def gauge(gw: Running, unit: str) -> str:
    _, text = await page(base(gw) + "/metrics")
    found = re.search(
        rf'smtp2pulse_domain_budget_used\{{domain="sms.local",unit="{unit}"\}} (\d+)', text
    )
    assert found is not None, text
    return found.group(1)


async def state_of(gw: Running, queue_id: str) -> list[State]:
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None
    return [d.state for d in detail.deliveries]


async def fits(page_: Page) -> None:
    """Nothing wider than a phone, every text legible, no script."""
    assert await page_.evaluate(OVERFLOW) <= 0
    assert await page_.evaluate(CONTRAST) == []
    await no_script(page_)


async def test_the_bill_against_limits_held_and_suppressed_and_what_an_operator_does(
    start_gateway: Callable[..., Awaitable[Running]], browser: Browser, platform: FakePlatform
) -> None:
    gw = await start_gateway(LIMITED)
    sent = [
        await gw.submit(text_message(f"Alert {n}", f"Disk {n} full"), f"7900123456{n}@sms.local")
        for n in range(2)
    ]
    sent.append(await gw.submit(text_message("Alert 2", "x" * 200), "79001234562@sms.local"))
    for queue_id in sent:
        assert await gw.wait_final(queue_id) == ["sent"]
    # A storm: the first alert again, twice (repeats), then two new ones over messages_per_day.
    repeats = [
        await gw.submit(text_message("Alert 0", "Disk 0 full"), "79001234560@sms.local")
        for _ in range(2)
    ]
    held = [
        await gw.submit(text_message(f"Alert {n}", f"Disk {n} full"), f"7900123456{n}@sms.local")
        for n in (7, 8)
    ]
    for queue_id in held:
        assert await state_of(gw, queue_id) == [State.HELD]
    assert len(platform.messages) == 3
    assert await gauge(gw, "messages") == "3"

    dialogs: list[str] = []
    browser_page = await watched_page(browser, dialogs)
    await browser_page.goto(base(gw) + "/")
    await fits(browser_page)
    # The glance: a limit reached needs a person (coloured, and said in words); held now.
    assert "attention" in (await browser_page.get_attribute("#limits-card", "class") or "")
    card = (await browser_page.inner_text("#limits-card")).split()
    assert card[2:5] == ["1", "reached", "sms.local"]
    assert (await browser_page.inner_text("#held-now")).split()[:3] == ["held", "now", "2"]
    assert await browser_page.locator("#errors").count() == 0  # a limit is no platform error
    # Against its limits: the gauges' numbers, the rule, a sign in words beside the colour.
    limits = (await browser_page.locator("#limit-sms\\.local").all_inner_texts())[0].split("\t")
    assert limits[2] == "3 of 3 limit reached"  # the same 3 as the gauge
    assert limits[3] == "4 of 5 near the limit"  # two 1-part SMS and a 2-part one
    assert await gauge(gw, "parts") == "4"
    assert limits[4:] == ["5 per 1h", "hold"]
    reached = browser_page.locator("#limit-sms\\.local td.attention")
    assert await reached.count() == 1  # only the limit reached is coloured; near is words
    # The bill: held by limit with until when, suppressed by reason.
    row = await browser_page.locator("#bill tr", has_text="sms.local").first.all_inner_texts()
    cells = row[0].split("\t")
    assert cells[:3] == ["sms.local", "7", "3"]
    assert cells[5].startswith("2 (messages_per_day 3)") and "until" in cells[5]
    assert re.search(r"\(in \d+ (h|min|s)", cells[5])  # an age still to come
    assert cells[-1] == "2 repeat"
    # The chart: held is a series of its own.
    assert await browser_page.locator("svg#chart polyline.s-held").count() == 1
    await browser_page.click("#chart-numbers summary")
    last = (await browser_page.locator("#chart-numbers tr").all_inner_texts())[-1].split("\t")
    assert last[1:] == ["7", "3", "0", "2", "2"]
    # The state filter `held` lists them, with why.
    await browser_page.select_option("select[name=state]", "held")
    await browser_page.click("form.search button")
    await browser_page.wait_for_url("**state=held*")
    rows = (await browser_page.locator("#deliveries tr").all_inner_texts())[1:]
    assert len(rows) == 2 and all("limit messages_per_day 3 reached; held until" in r for r in rows)
    await fits(browser_page)

    # A held message's page: why and until when; release, send anyway, drop; no retry.
    first, second = held
    await browser_page.goto(f"{base(gw)}/queue/{first}")
    text = await browser_page.inner_text("table.delivery")
    assert "held by\tlimit messages_per_day 3 reached; held until" in text
    assert "held until\t" in text and "then its limits are looked at again" in text
    assert await browser_page.locator("#actions button", has_text="Retry").count() == 0
    await fits(browser_page)
    await browser_page.set_viewport_size(PHONE)
    await fits(browser_page)
    # Release by keyboard: the limits are looked at again, and still say no.
    for _ in range(40):
        if await browser_page.evaluate("document.activeElement.id") == "release":
            break
        await browser_page.keyboard.press("Tab")
    await browser_page.keyboard.press("Enter")
    await browser_page.wait_for_url(f"**/queue/{first}?done=release&n=1")
    assert "Released" in await browser_page.inner_text("#done")
    assert (
        "release",
        "release within its limits requested from the console by 127.0.0.1",
    ) in await history(gw, first)
    await asyncio.sleep(1.5)  # the held watch has looked (LOOK_EVERY 1 s)
    assert await state_of(gw, first) == [State.HELD]
    assert len(platform.messages) == 3
    # A plain retry (by POST, as an old page's form would) does not send a held one either.
    url = f"{base(gw)}/queue/{first}"
    status, _, location = await post(url + "/retry", {"csrf": await token_of(url)})
    assert status == 303 and location.endswith("n=0")
    # Send anyway: not without the token, not without the confirmation page's "yes".
    status, _, _ = await post(url + "/send-anyway", {"confirm": "yes"})
    assert status == 403
    status, _, _ = await post(url + "/send-anyway", {"csrf": await token_of(url)})
    assert status == 400
    assert await state_of(gw, first) == [State.HELD]
    await browser_page.click("#send-anyway")
    await browser_page.wait_for_url(f"**/queue/{first}/send-anyway")
    assert await browser_page.inner_text("#held-count") == "1"
    await fits(browser_page)
    await browser_page.click("#confirm button")
    await browser_page.wait_for_url(f"**/queue/{first}?done=send-anyway&n=1")
    assert await gw.wait_final(first) == ["sent"]
    assert platform.messages[-1]["sent_to"] == "79001234567"
    assert (
        "released",
        "sent now over its limit from the console by 127.0.0.1",
    ) in await history(gw, first)
    assert await gauge(gw, "messages") == "4"  # counted against the limit, as the page says

    # Drop the other held one: kept, suppressed, with who.
    await browser_page.goto(f"{base(gw)}/queue/{second}")
    await browser_page.click("#actions button.danger")
    await browser_page.wait_for_url(f"**/queue/{second}?done=drop&n=1")
    assert await state_of(gw, second) == [State.SUPPRESSED]

    await browser_page.set_viewport_size({"width": 1280, "height": 900})
    await browser_page.goto(base(gw) + "/")
    limits = (await browser_page.locator("#limit-sms\\.local").all_inner_texts())[0].split("\t")
    assert limits[2] == "4 of 3 limit reached"
    assert (await browser_page.inner_text("#held-now")).split()[:3] == ["held", "now", "0"]
    row = await browser_page.locator("#bill tr", has_text="sms.local").first.all_inner_texts()
    assert row[0].split("\t")[-1] == "2 repeat, 1 dropped"
    for queue_id in repeats:
        assert await state_of(gw, queue_id) == [State.SUPPRESSED]
    # At a phone's width the bill and the limits are rows that wrap, the sign in sight.
    await browser_page.set_viewport_size(PHONE)
    await browser_page.goto(base(gw) + "/")
    await fits(browser_page)
    for sign in ("#limit-sms\\.local td.attention", "#bill td[data-label=held]"):
        box = await browser_page.locator(sign).first.bounding_box()
        assert box is not None and box["x"] + box["width"] <= PHONE["width"], sign
    assert "4 of 3 limit reached" in await browser_page.inner_text("#limit-sms\\.local")
    assert dialogs == []


async def test_a_listing_marks_a_message_that_had_a_picture(
    start_gateway: Callable[..., Awaitable[Running]], browser: Browser
) -> None:
    gw = await start_gateway(
        {
            "smtp": {"max_message_size": "1MiB"},
            "http": {"listen": "127.0.0.1:0", "public_url": "https://gw.example.com"},
            "domains": {"viber.local": {"type": "viber", "images": True}},
        }
    )
    pictured = await gw.submit(with_attachment(camera_jpeg()), "79001234567@viber.local")
    plain = await gw.submit(text_message("No picture"), "79001234568@viber.local")
    assert await gw.wait_final(pictured) == ["sent"] and await gw.wait_final(plain) == ["sent"]
    browser_page = await watched_page(browser, [])
    await browser_page.goto(base(gw) + "/")
    marked = browser_page.locator("#deliveries tr", has=browser_page.locator(".tag"))
    assert await marked.count() == 1
    assert pictured in await marked.inner_text() and "picture" in await marked.inner_text()
    await browser_page.goto(f"{base(gw)}/queue/{pictured}")
    await eventually(
        lambda: browser_page.evaluate("document.getElementById('picture').complete"),
    )
    await browser_page.set_viewport_size(PHONE)
    await fits(browser_page)


async def test_a_masked_console_shows_no_picture(
    start_gateway: Callable[..., Awaitable[Running]],
) -> None:
    gw = await start_gateway(
        {
            "smtp": {"max_message_size": "1MiB"},
            "log": {"mask_personal_data": True},
            "http": {"listen": "127.0.0.1:0", "public_url": "https://gw.example.com"},
            "domains": {"viber.local": {"type": "viber", "images": True}},
        }
    )
    pictured = await gw.submit(with_attachment(camera_jpeg()), "79001234567@viber.local")
    assert await gw.wait_final(pictured) == ["sent"]
    status, html = await page(f"{base(gw)}/queue/{pictured}")
    assert status == 200 and "picture-row" in html and "<img" not in html


async def explained(gw: Running, queue_id: str) -> tuple[set[str], set[str], str]:
    """A message page's offered actions, the actions its explanation explains, and its words."""
    status, html = await page(f"{base(gw)}/queue/{queue_id}")
    assert status == 200, html
    actions = html.split("<h3>Actions</h3>", 1)[1].split("<h3>Delivery", 1)[0]
    offered = set(re.findall(r'action="/queue/[0-9A-F]+/([a-z-]+)"', actions))
    if 'id="send-anyway"' in actions:
        offered.add("send-anyway")
    text = actions.split('id="actions-help">', 1)[1].split("</p>", 1)[0]
    return offered, set(re.findall(r'data-explains="([a-z-]+)"', text)), re.sub("<[^>]+>", "", text)


async def test_a_message_page_explains_only_the_actions_it_offers(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway({**LIMITED, "spool": {"retry": ["1s"], "give_up_after": "1s"}})
    platform.default = Reply(status=503)
    failed = await gw.submit(text_message("Alert 0", "Disk 0 full"), "79001234560@sms.local")
    assert await gw.wait_final(failed) == ["failed"]
    platform.default = Reply()
    for n in (1, 2):
        sent = await gw.submit(text_message(f"Alert {n}", f"Disk {n}"), f"7900123456{n}@sms.local")
        assert await gw.wait_final(sent) == ["sent"]
    held = await gw.submit(text_message("Alert 3", "Disk 3 full"), "79001234563@sms.local")
    assert await state_of(gw, held) == [State.HELD]

    offered, explains, words = await explained(gw, held)
    assert offered == explains == {"release", "send-anyway", "drop"}
    assert "Release" in words and "Send now anyway" in words and "Drop" in words
    assert "Retry" not in words and "retry" not in words and "Settle" not in words

    offered, explains, words = await explained(gw, failed)
    assert offered == explains == {"retry"}
    assert "Retry" in words
    assert "Release" not in words and "Drop" not in words and "Settle" not in words
