"""A message's picture on the status page, in a real headless browser: told of, and shown as a
thumbnail that the page's Content-Security-Policy lets load (from this server only)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from playwright.async_api import Browser

from tests.conftest import Running
from tests.pictures import camera_jpeg, transparent_png, with_attachment
from tests.status.test_page import base, watched_page


async def test_the_message_page_shows_the_picture_it_sent(
    start_gateway: Callable[..., Awaitable[Running]], browser: Browser
) -> None:
    gw = await start_gateway(
        {
            "smtp": {"max_message_size": "1MiB"},
            "http": {"listen": "127.0.0.1:0", "public_url": "https://gw.example.com"},
            "domains": {"viber.local": {"type": "viber", "images": True}},
        }
    )
    queue_id = await gw.submit(with_attachment(camera_jpeg()), "79001234567@viber.local")
    plain = await gw.submit(
        with_attachment(transparent_png()[:100], "png", "cut.png"), "79001234567@viber.local"
    )
    assert await gw.wait_final(queue_id) == ["sent"] and await gw.wait_final(plain) == ["sent"]
    dialogs: list[str] = []
    page = await watched_page(browser, dialogs)
    blocked: list[str] = []  # what the Content-Security-Policy refused (favicon's 404 aside)
    page.on(
        "console",
        lambda message: blocked.append(message.text) if "Security" in message.text else None,
    )
    response = await page.goto(f"{base(gw)}/queue/{queue_id}")
    assert response is not None and response.status == 200
    assert "img-src 'self'" in response.headers["content-security-policy"]
    text = await page.inner_text("#message")
    assert "image/jpeg 320x240" in text and "from snapshot.jpg" in text
    await page.wait_for_function("document.getElementById('picture').complete")
    assert await page.evaluate("document.getElementById('picture').naturalWidth") == 320
    assert blocked == [] and dialogs == []

    await page.goto(f"{base(gw)}/queue/{plain}")
    assert "not sent: a broken picture" in await page.inner_text("#message")
    assert await page.locator("img").count() == 0
