"""A look at the console (the status page): a fresh spool given a day of history through the
spool's interface, the real daemon (dry run) on free ports sending what keeps arriving over SMTP
while the pictures are taken, and screenshots of the main page under that load, a failed
message's page, and both at a phone's width, taken in headless chromium (Debian's, driven by
Playwright; no browser download).

    python bench/screenshot.py                 # writes console-*.png into ./screenshots/
    python bench/screenshot.py --out /tmp/shots --mask    # with log.mask_personal_data on
    python bench/screenshot.py --storm         # and a storm against limits: console-storm-*.png

With --storm a domain with repeat_window and limits (alerts.local) first gets a storm of
identical alerts (kept suppressed as repeats) and then distinct ones past its per_recipient and
messages_per_day limits (held), so the pictures show the bill against limits, held and
suppressed; the held message's page is taken instead of a failed one's.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import math
import random
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml
from playwright.async_api import async_playwright

from gateway.spool.rows import IncomingMessage, NewDelivery, Result, Suppressed
from gateway.spool.sqlite.store import SqliteSpool
from gateway.spool.states import State

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TEXTS = [
    "Your order 4417 is ready for pickup at Tverskaya 12, open until 21:00.",
    "Code 5521 to sign in. Never tell it to anyone, not even to us.",
    "Zabbix: disk /var on db1 is 93% full. Please look before it fills up, thank you.",
    "Ваш заказ 4417 готов к выдаче.",
]
MESSAGES = [
    ("79001112233@sms.local", "OK: nightly backup done", "Nothing to do."),
    ("89001234567@sms.local", "Order 42", "Your order is ready."),
    ("79007654321@sms.local", "<script>alert(1)</script> Order 43", "Escaped, not run."),
    ("ivan=example.com@mail.local", "Invoice", "Attached."),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The storm's domain: identical alerts are repeats; distinct ones meet the limits.
STORM_DOMAIN = {
    "type": "sms",
    "sender": "Monitoring",
    "repeat_window": "10m",
    "limits": {"messages_per_day": 20, "parts_per_day": 24, "per_recipient": "6/1h"},
}
ON_CALL = [f"7916000000{n}@alerts.local" for n in range(4)]


def storm(port: int) -> int:
    """25 identical alerts to each on-call phone, then 7 distinct ones to each."""
    sent = 0
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        for _ in range(25):
            for to in ON_CALL:
                body = "PROBLEM: db1 is unreachable (ping loss 100%)"
                message = f"Subject: PROBLEM: db1 unreachable\r\n\r\n{body}\r\n"
                client.sendmail("zabbix@example.com", [to], message.encode())
                sent += 1
        for n in range(7):
            for to in ON_CALL:
                body = f"PROBLEM: service {n} on app{n} is down since 04:{10 + n:02d}"
                message = f"Subject: PROBLEM: app{n} down\r\n\r\n{body}\r\n"
                client.sendmail("zabbix@example.com", [to], message.encode())
                sent += 1
    return sent


def config(
    spool: Path, smtp_port: int, http_port: int, mask: bool, stormy: bool = False
) -> dict[str, object]:
    domains: dict[str, object] = {
        "sms.local": {
            "type": "sms",
            "sender": "MyShop",
            "rewrite": [{"match": r"^8(\d{10})$", "replace": r"7\1"}],
        },
        "mail.local": {"type": "email", "sender": "shop@example.com"},
    }
    if stormy:
        domains["alerts.local"] = STORM_DOMAIN
    return {
        "smtp": {"listen": f"127.0.0.1:{smtp_port}"},
        "api": {"dry_run": True},
        "spool": {"path": str(spool)},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "log": {"mask_personal_data": mask},
        "domains": domains,
        "routes": [{"name": "ok-notices", "match": {"subject": "^OK:"}, "drop": True}],
    }


def wait_healthy(url: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def seed(path: Path, now: float, hours: int = 24) -> None:
    """A day of history in the spool before the daemon opens it, written through the spool's
    own interface with a clock set back (the daemon sends what arrives after)."""
    clock = [now]
    spool = SqliteSpool(path, clock=lambda: clock[0])
    await spool.start()
    rng = random.Random(35)
    for hour in range(hours, 0, -1):
        count = int(12 + 10 * math.sin(hour / 3.8) ** 2)
        for i in range(count):
            clock[0] = now - hour * 3600 + i * 3600 / count
            number = f"7900{rng.randrange(10**7):07d}"
            text = rng.choice(TEXTS)
            drop = rng.random() < 0.08
            delivery = NewDelivery(
                f"{number}@sms.local",
                {"type": "sms", "sender": "MyShop", "sent_to": number, "sent_text": text},
                Suppressed("route", "ok-notices") if drop else None,
                ("routed", "route ok-notices: dropped") if drop else None,
            )
            subject = "OK: backup done" if drop else text.split(".")[0]
            await spool.accept(
                IncomingMessage(
                    "crm@example.com", "10.0.0.5", "crm", b"x", (delivery,), subject=subject
                )
            )
            for leased in await spool.lease(10, 60):
                failed = hour in (7, 8) and rng.random() < 0.5  # an outage, seven hours ago
                await spool.record(
                    Result(
                        leased.id,
                        State.FAILED,
                        clock[0],
                        "failed",
                        "gave up after 9 attempts: HTTP 503 Service Unavailable",
                    )
                    if failed
                    else Result(leased.id, State.SENT, clock[0], "sent", "p", f"p-{leased.id}")
                )
    await spool.stop()


def keep_sending(port: int, stop: threading.Event) -> int:
    """Load while the pictures are taken: a message every few milliseconds over SMTP."""
    sent = 0
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        while not stop.is_set():
            to, subject, body = MESSAGES[sent % len(MESSAGES)]
            client.sendmail(
                "crm@example.com", [to], f"Subject: {subject}\r\n\r\n{body}\r\n".encode()
            )
            sent += 1
    return sent


async def shoot(base: str, out: Path, prefix: str = "console", state: str = "failed") -> list[Path]:
    """The main page, a message's page (the newest in `state`), both at a phone's width."""
    shots = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(base + "/")
        shots.append(out / f"{prefix}-index.png")
        await page.screenshot(path=shots[-1], full_page=True)
        shots.append(out / f"{prefix}-index-top.png")  # what the first screen shows
        await page.screenshot(path=shots[-1])
        await page.goto(base + f"/?state={state}")
        await page.click("#deliveries tr:nth-child(2) a")
        shots.append(out / f"{prefix}-message.png")
        await page.screenshot(path=shots[-1], full_page=True)
        phone = await browser.new_page(viewport={"width": 390, "height": 844})
        await phone.goto(base + "/")
        shots.append(out / f"{prefix}-phone.png")
        await phone.screenshot(path=shots[-1], full_page=True)
        for n, at in enumerate(("#glance", "#bill-heading", "#chart-heading", "#deliveries")):
            await phone.locator(at).scroll_into_view_if_needed()
            await phone.evaluate(f"document.querySelector('{at}').scrollIntoView()")
            shots.append(out / f"{prefix}-phone-{n + 1}.png")
            await phone.screenshot(path=shots[-1])
        await phone.goto(page.url)
        shots.append(out / f"{prefix}-phone-message.png")
        await phone.screenshot(path=shots[-1], full_page=True)
        await browser.close()
    return shots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("screenshots"))
    parser.add_argument("--mask", action="store_true", help="log.mask_personal_data: true")
    parser.add_argument("--storm", action="store_true", help="a storm against a domain's limits")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        smtp_port, http_port = free_port(), free_port()
        path = Path(tmp) / "config.yaml"
        asyncio.run(seed(Path(tmp) / "spool.sqlite3", time.time()))
        path.write_text(
            yaml.safe_dump(
                config(Path(tmp) / "spool.sqlite3", smtp_port, http_port, args.mask, args.storm)
            )
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "-c", str(path)], stderr=subprocess.DEVNULL
        )
        try:
            base = f"http://127.0.0.1:{http_port}"
            wait_healthy(base + "/healthz")
            if args.storm:
                print(f"{storm(smtp_port)} storm messages sent over SMTP first")
            stop = threading.Event()
            with concurrent.futures.ThreadPoolExecutor() as pool:
                load = pool.submit(keep_sending, smtp_port, stop)
                time.sleep(1.0)  # the dry-run sends
                try:
                    shots = (
                        shoot(base, args.out, "console-storm", "held")
                        if args.storm
                        else shoot(base, args.out)
                    )
                    for shot in asyncio.run(shots):
                        print(shot)
                finally:
                    stop.set()
                print(f"{load.result()} messages sent over SMTP meanwhile")
        finally:
            daemon.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.wait(15)
            if daemon.poll() is None:
                daemon.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
