"""The console in Debian's headless chromium (Playwright): the glance, the bill and the chart
read as they should; search and filters; actions by keyboard and by click, through the
confirmation page; a phone's width with nothing wider than the screen; contrast; and no script
anywhere, whatever the page."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from playwright.async_api import Browser, Page, ViewportSize

from tests.conftest import Running, text_message
from tests.fakeplatform import FakePlatform, Reply
from tests.status.test_page import HTTP, base, watched_page

CONSOLE: dict[str, Any] = {
    **HTTP,
    "api": {"dry_run": True},
    "routes": [{"name": "ok-notices", "match": {"subject": "^OK:"}, "drop": True}],
}
ZONED = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}")
PHONE: ViewportSize = {"width": 375, "height": 740}

# Every element with text of its own whose contrast with the background behind it is below
# WCAG AA's 4.5:1 (the chart's SVG text is drawn dark on white and left out).
CONTRAST = """() => {
  const rgb = s => (s.match(/rgba?\\(([^)]+)\\)/) || [null, '0,0,0,0'])[1].split(',').map(Number);
  const lum = c => c.slice(0, 3).map(v => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); })
    .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const behind = el => { for (; el; el = el.parentElement) {
    const c = rgb(getComputedStyle(el).backgroundColor); if (c.length < 4 || c[3] > 0) return c; }
    return [255, 255, 255]; };
  const low = [];
  for (const el of document.querySelectorAll('body *')) {
    if (el.closest('svg') || !el.getClientRects().length) continue;
    if (![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
    const a = lum(rgb(getComputedStyle(el).color)), b = lum(behind(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const text = el.textContent.trim().slice(0, 30);
    if (ratio < 4.5) low.push(`${el.tagName} "${text}" ${ratio.toFixed(2)}`);
  }
  return low;
}"""
OVERFLOW = "() => document.documentElement.scrollWidth - window.innerWidth"


async def no_script(page: Page) -> None:
    assert await page.locator("script").count() == 0
    assert await page.evaluate("typeof window.pwned") == "undefined"


async def test_the_glance_the_bill_and_the_chart_say_what_they_count(
    start_gateway: Callable[..., Awaitable[Running]], browser: Browser
) -> None:
    gw = await start_gateway(CONSOLE)
    long = await gw.submit(text_message("Order 42", "x" * 200), "79001234567@sms.local")
    short = await gw.submit(text_message("Code", "5521"), "79005556677@sms.local")
    dropped = await gw.submit(text_message("OK: backup done"), "79009998877@sms.local")
    assert await gw.wait_final(long) == ["sent"] and await gw.wait_final(short) == ["sent"]
    dialogs: list[str] = []
    page = await watched_page(browser, dialogs)
    response = await page.goto(base(gw) + "/")
    assert response is not None and response.status == 200
    assert "script-src" not in (await response.all_headers())["content-security-policy"]
    await no_script(page)

    # The dry run is said first thing, above everything else.
    assert (await page.locator("#dry-run").bounding_box() or {"y": 999})["y"] < 60
    # Counts say what they count; no colour where nobody is needed.
    assert (await page.inner_text("#today-accepted")).split()[:3] == ["accepted", "today", "3"]
    assert "2" in (await page.inner_text("#today-sent")).split()
    assert (await page.inner_text("#today-suppressed")).split()[:3] == ["suppressed", "today", "1"]
    assert await page.inner_text("#unconfirmed b") == "0"
    body_colour = await page.evaluate("getComputedStyle(document.body).color")
    for quiet in ("#unconfirmed b", "#count-failed a", "#count-sent a", "#readiness b"):
        colour = await page.evaluate(f"getComputedStyle(document.querySelector('{quiet}')).color")
        assert colour == body_colour, quiet
    # Ages, each with its exact time and zone in a title.
    first = page.locator("#deliveries time").first
    assert re.fullmatch(r"\d+ s ago", await first.inner_text())
    assert ZONED.fullmatch(await first.get_attribute("title") or "")
    assert ZONED.search(await page.inner_text("#bill-heading + p"))

    # The bill: today's messages and SMS parts per domain, suppressed with its reason; routes.
    row = await page.locator("#bill tr", has_text="sms.local").first.all_inner_texts()
    cells = row[0].split("\t")
    assert cells[:4] == ["sms.local", "3", "2", "3"]  # 200 x's are 2 parts, "5521" one
    assert cells[-1] == "1 route"
    assert (await page.inner_text("#routes")).split()[-2:] == ["ok-notices", "1"]

    # The chart: an SVG drawn on the server, named in words, its numbers in a table too.
    assert await page.locator("svg#chart polyline").count() == 5
    title = await page.locator("svg#chart title#chart-title").text_content() or ""
    assert "3 accepted" in title and "2 sent" in title and "1 suppressed" in title
    await page.click("#chart-numbers summary")
    last = (await page.locator("#chart-numbers tr").all_inner_texts())[-1].split("\t")
    assert last[1:] == ["3", "2", "0", "1", "0"]

    # One box finds by subject words, sender or queue id; filters narrow it.
    await page.fill("input[name=q]", "backup done")
    await page.press("input[name=q]", "Enter")
    await page.wait_for_url("**/?q=backup+done*")
    rows = await page.locator("#deliveries tr").all_inner_texts()
    assert len(rows) == 2 and dropped in rows[1] and "suppressed" in rows[1]
    await page.fill("input[name=q]", "app@corp.test")
    await page.select_option("select[name=state]", "sent")
    await page.click("form.search button")
    await page.wait_for_url("**state=sent*")
    rows = await page.locator("#deliveries tr").all_inner_texts()
    assert len(rows) == 3 and short in rows[1] and long in rows[2]
    await page.goto(base(gw) + "/?domain=nowhere.test")
    assert "No delivery matches" in await page.inner_text("#nothing")

    await page.goto(base(gw) + f"/queue/{dropped}")
    assert await page.inner_text("#subject") == "OK: backup done"
    assert await page.inner_text("#sender") == "<app@corp.test>"
    assert "route ok-notices: dropped" in await page.inner_text("#route")
    assert "Nothing to do" in await page.inner_text("#no-actions")
    await no_script(page)
    assert dialogs == []


async def test_a_retry_by_keyboard_and_the_last_hours_failures_after_a_confirmation(
    start_gateway: Callable[..., Awaitable[Running]], browser: Browser, platform: FakePlatform
) -> None:
    platform.default = Reply(status=503)
    gw = await start_gateway({**HTTP, "spool": {"retry": ["1s"], "give_up_after": "1s"}})
    first = await gw.submit(text_message("Disk full"), "79001234567@sms.local")
    second = await gw.submit(text_message("Disk fuller"), "79005556677@sms.local")
    assert await gw.wait_final(first) == ["failed"] and await gw.wait_final(second) == ["failed"]
    dialogs: list[str] = []
    page = await watched_page(browser, dialogs)

    await page.goto(base(gw) + "/")
    assert "attention" in (await page.get_attribute("#count-failed", "class") or "")
    assert "attempts: HTTP #" in await page.inner_text("#errors")  # one kind, two deliveries
    assert (await page.locator("#errors tr").all_inner_texts())[1].split("\t")[1] == "2"

    # Keyboard only: the skip link first, visible when focused; then to the Retry button.
    await page.goto(base(gw) + f"/queue/{first}")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.className") == "skip"
    box = await page.locator("a.skip").bounding_box()
    assert box is not None and box["x"] >= 0 and box["y"] >= 0
    await page.keyboard.press("Enter")
    assert await page.evaluate("document.activeElement.id") == "main"
    for _ in range(20):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.textContent") == "Retry now":
            break
    style = await page.evaluate(
        "[getComputedStyle(document.activeElement).outlineStyle,"
        " getComputedStyle(document.activeElement).outlineWidth]"
    )
    assert style == ["solid", "3px"]  # the focus is seen
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"**/queue/{first}?done=retry&n=1")
    assert "Retried: 1" in await page.inner_text("#done")
    assert "requested from the console by 127.0.0.1" in await page.inner_text("main")
    assert await gw.wait_final(first) == ["failed"]  # tried again; the platform is still down

    platform.default = Reply()  # back
    await page.goto(base(gw) + "/")
    await page.click("#retry-failed")
    await page.wait_for_url("**/retry-failed")
    assert await page.inner_text("#failed-count") == "2"
    await page.click("text=Yes, retry them")
    await page.wait_for_url("**/?done=retry-failed&n=2")
    assert "Retried 2 deliveries" in await page.inner_text("#done")
    assert await gw.wait_final(first) == ["sent"] and await gw.wait_final(second) == ["sent"]
    await no_script(page)
    assert dialogs == []


async def test_a_phones_width_and_contrast(
    start_gateway: Callable[..., Awaitable[Running]], browser: Browser, platform: FakePlatform
) -> None:
    platform.default = Reply(status=503)
    gw = await start_gateway({**CONSOLE, "api": {}, "spool": {"give_up_after": "1s"}})
    long_name = "ivan.petrovich.sidorov-ochen-dlinnoe-imya" * 2
    failed = await gw.submit(
        text_message("A subject that goes on " * 6, "word " * 80),
        "89001234567@sms.local",
        sender=f"{long_name}@corp.test",
    )
    assert await gw.wait_final(failed) == ["failed"]
    page = await browser.new_page(viewport=PHONE)
    for path in ("/", f"/queue/{failed}", "/retry-failed", "/?q=79001234567", "/?state=failed"):
        await page.goto(base(gw) + path)
        assert await page.evaluate(OVERFLOW) <= 0, f"{path} is wider than a phone"
        assert await page.evaluate(CONTRAST) == [], path
        await no_script(page)
    # The chart's labels stay legible: at least 9 CSS pixels high on the phone.
    await page.goto(base(gw) + "/")
    height = await page.evaluate(
        "document.querySelector('svg#chart text').getBoundingClientRect().height"
    )
    assert height >= 9
    wide = await browser.new_page(viewport={"width": 1280, "height": 900})
    for path in ("/", f"/queue/{failed}"):
        await wide.goto(base(gw) + path)
        assert await wide.evaluate(CONTRAST) == [], path
