"""The status page in a real headless browser (Debian's chromium driven by Playwright), against
the running gateway: it loads, the search finds a message sent over SMTP in the test, and a
subject carrying <script> is shown as text and never runs."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from playwright.async_api import Browser, Page

from tests.conftest import TOKEN, Running, eventually, text_message
from tests.fakeplatform import FakePlatform, Reply

HTTP: dict[str, Any] = {
    "http": {"listen": "127.0.0.1:0"},
    "domains": {
        "sms.local": {
            "type": "sms",
            "sender": "MyShop",
            "rewrite": [{"match": r"^8(\d{10})$", "replace": r"7\1"}],
        }
    },
}
ATTACK = "<script>window.pwned = 1; alert('pwned')</script><img src=x onerror=alert(2)> Order 42"


def base(gw: Running) -> str:
    assert gw.gateway.status is not None
    host, port = gw.gateway.status.addresses[0]
    return f"http://{host}:{port}"


async def watched_page(browser: Browser, dialogs: list[str]) -> Page:
    page = await browser.new_page()

    async def dismiss(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", dismiss)
    return page


async def test_page_loads_searches_and_shows_a_script_subject_as_text(
    start_gateway: Callable[..., Awaitable[Running]], browser: Browser
) -> None:
    gw = await start_gateway(HTTP)
    other = await gw.submit(text_message("Another"), "79005556677@sms.local")
    queue_id = await gw.submit(text_message(ATTACK), "89001234567@sms.local")
    assert await gw.wait_final(queue_id) == ["sent"] and await gw.wait_final(other) == ["sent"]
    dialogs: list[str] = []
    page = await watched_page(browser, dialogs)

    response = await page.goto(base(gw) + "/")
    assert response is not None and response.status == 200
    assert await page.title() == "smtp2pulse"
    assert "ready" in await page.inner_text("#readiness")
    assert (await page.inner_text("#count-sent")).split() == ["2", "sent"]
    assert await page.inner_text("#sent-last-hour b") == "2"
    rows = await page.locator("#deliveries tr").all_inner_texts()
    assert queue_id in rows[1] and other in rows[2]  # newest first
    assert TOKEN not in await page.content()

    await page.fill("input[name=q]", "79001234567")  # as sent; the mail said 8900…
    await page.press("input[name=q]", "Enter")
    await page.wait_for_url("**/?q=79001234567&state=&domain=")
    rows = await page.locator("#deliveries tr").all_inner_texts()
    assert len(rows) == 2 and queue_id in rows[1] and "89001234567@sms.local" in rows[1]

    await page.click(f"text={queue_id}")
    await page.wait_for_url(f"**/queue/{queue_id}")
    text = await page.inner_text("body")
    assert "<script>window.pwned = 1;" in text and "onerror=alert(2)>" in text  # shown, as text
    assert await page.evaluate("typeof window.pwned") == "undefined"
    assert await page.locator("script, img").count() == 0
    assert "received" in text and "sent" in text and "MyShop" in text

    await page.fill("input[name=q]", queue_id.lower())  # a queue id goes to its page
    await page.press("input[name=q]", "Enter")
    await page.wait_for_url(f"**/queue/{queue_id}")
    assert dialogs == []

    await page.goto(base(gw) + "/?q=" + "%3Cscript%3Ealert(3)%3C/script%3E")
    assert "No delivery matches" in await page.inner_text("#nothing")
    assert await page.input_value("input[name=q]") == "<script>alert(3)</script>"
    assert dialogs == []
    missing = await page.goto(base(gw) + "/queue/0NOSUCH")
    assert missing is not None and missing.status == 404


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_page_masks_personal_data_when_asked(
    start_gateway: Callable[..., Awaitable[Running]],
) -> None:
    gw = await start_gateway({**HTTP, "log": {"mask_personal_data": True}})
    queue_id = await gw.submit(
        text_message("Call 79005554433"), "89005554433@sms.local", sender="ivan.petrov@corp.test"
    )
    await gw.wait_final(queue_id)
    for path in ("/", "/?q=79005554433", f"/queue/{queue_id}"):
        status, html = await get(base(gw) + path)
        assert status == 200 and queue_id in html, path
        assert "9005554433" not in html and "ivan.petrov" not in html, path
        assert "***33" in html, path
    status, html = await get(base(gw) + f"/queue/{queue_id}")
    assert "i***@corp.test" in html


async def test_page_answers_only_the_allowed_networks(
    start_gateway: Callable[..., Awaitable[Running]],
) -> None:
    gw = await start_gateway({"http": {"listen": "127.0.0.1:0", "allow_networks": ["10.0.0.0/8"]}})
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    for path in ("/", "/?q=79001234567", f"/queue/{queue_id}"):
        status, html = await get(base(gw) + path)
        assert status == 403 and queue_id not in html and "7900" not in html


async def attempted(gw: Running, queue_id: str) -> bool:
    detail = await gw.gateway.spool.show_message(queue_id)
    return detail is not None and detail.deliveries[0].attempts > 0


async def test_page_shows_platform_errors_and_the_oldest_waiting(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    platform.script = [Reply(body='{"type": "error", "msg": "no <b>money</b>"}')]
    platform.default = Reply(status=503)
    gw = await start_gateway({**HTTP, "spool": {"retry": ["1h"]}})
    refused = await gw.submit(text_message(), "79001234567@sms.local")
    assert await gw.wait_final(refused) == ["refused"]
    waiting = await gw.submit(text_message(), "79005556677@sms.local")
    await eventually(lambda: attempted(gw, waiting), every=0.02)  # its first attempt recorded
    status, html = await get(base(gw) + "/")
    assert status == 200
    errors = html.split('id="errors"', 1)[1].split("</table>", 1)[0]
    assert refused in errors and "no &lt;b&gt;money&lt;/b&gt;" in errors
    waiting_card = html.split('id="waiting"', 1)[1].split("</div>", 1)[0]
    assert f'<a href="/queue/{waiting}" id="oldest-waiting">' in waiting_card
    counts = {
        state: html.split(f'id="count-{state}"', 1)[1].split("</b>", 1)[0][-1]
        for state in ("queued", "refused", "sent")
    }
    assert counts == {"queued": "1", "refused": "1", "sent": "0"}


async def test_every_time_on_the_page_names_its_zone(
    start_gateway: Callable[..., Awaitable[Running]],
) -> None:
    gw = await start_gateway(HTTP)
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    await gw.wait_final(queue_id)
    stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d( [+-]\d{4})?")
    for path in ("/", f"/queue/{queue_id}"):
        status, html = await get(base(gw) + path)
        shown = [match.group(0) for match in stamp.finditer(html)]
        assert status == 200 and shown, path
        assert all(match.group(1) for match in stamp.finditer(html)), (path, shown)
