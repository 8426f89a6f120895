"""A look at the status page: start the real daemon (dry run) on free ports with a fresh spool,
send a few messages over SMTP, and save screenshots of the page, a search and a message's page,
taken in headless chromium (Debian's, driven by Playwright; no browser download).

    python bench/screenshot.py                 # writes status-*.png into ./screenshots/
    python bench/screenshot.py --out /tmp/shots --mask    # with log.mask_personal_data on
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from playwright.async_api import async_playwright

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
MESSAGES = [
    ("89001234567@sms.local", "Order 42", "Your order is ready."),
    ("79007654321@sms.local", "<script>alert(1)</script> Order 43", "Escaped, not run."),
    ("ivan=example.com@mail.local", "Invoice", "Attached."),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(spool: Path, smtp_port: int, http_port: int, mask: bool) -> dict[str, object]:
    return {
        "smtp": {"listen": f"127.0.0.1:{smtp_port}"},
        "api": {"dry_run": True},
        "spool": {"path": str(spool)},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "log": {"mask_personal_data": mask},
        "domains": {
            "sms.local": {
                "type": "sms",
                "sender": "MyShop",
                "rewrite": [{"match": r"^8(\d{10})$", "replace": r"7\1"}],
            },
            "mail.local": {"type": "email", "sender": "shop@example.com"},
        },
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


async def shoot(base: str, out: Path) -> list[Path]:
    shots = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        for name, path in (("index", "/"), ("search", "/?q=79001234567")):
            await page.goto(base + path)
            shots.append(out / f"status-{name}.png")
            await page.screenshot(path=shots[-1], full_page=True)
        await page.goto(base + "/")
        await page.click("#deliveries tr:nth-child(2) a")
        shots.append(out / "status-message.png")
        await page.screenshot(path=shots[-1], full_page=True)
        await browser.close()
    return shots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("screenshots"))
    parser.add_argument("--mask", action="store_true", help="log.mask_personal_data: true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        smtp_port, http_port = free_port(), free_port()
        path = Path(tmp) / "config.yaml"
        path.write_text(
            yaml.safe_dump(config(Path(tmp) / "spool.sqlite3", smtp_port, http_port, args.mask))
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "-c", str(path)], stderr=subprocess.DEVNULL
        )
        try:
            base = f"http://127.0.0.1:{http_port}"
            wait_healthy(base + "/healthz")
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
                for to, subject, body in MESSAGES:
                    client.sendmail(
                        "crm@example.com", [to], f"Subject: {subject}\r\n\r\n{body}\r\n".encode()
                    )
            time.sleep(1.0)  # the dry-run sends
            for shot in asyncio.run(shoot(base, args.out)):
                print(shot)
        finally:
            daemon.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.wait(15)
            if daemon.poll() is None:
                daemon.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
