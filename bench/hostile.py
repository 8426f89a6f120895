"""Hostile clients in bulk: does the gateway's memory stay flat, and does it keep serving?

Runs rounds of abusive SMTP sessions (garbage lines, smuggling attempts, 10,000 RCPTs, huge
header lines, NUL bytes, bad UTF-8, deep MIME nesting, clients that vanish mid-DATA) against a
real `smtp2pulse serve`, and after each round prints the gateway's RSS and whether a normal
client still gets its message through. Bounded: --rounds × --sessions sessions, then it stops.

    python bench/hostile.py --rounds 5 --sessions 200

With --soak SECONDS, a broken platform instead (issue 29, item 8): for that long, big Cyrillic mail
to 50 recipients, batches of 20, garbage SMTP, callback floods and status page searches, while
tests/hostileplatform.py answers in turn wrong-length lists, 500s, 300 MB bodies, slow and
endless bodies, gzip bombs, non-UTF-8, 404s and connections it never reads. Prints the gateway's
RSS and open fds (its sender process included) before, every --every seconds, at the end and
after --quiet seconds of quiet. Loopback only; every loop ends at the deadline.

    python bench/hostile.py --soak 150 --quiet 45 [--sender process]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests.hostileplatform

from cpu import children
from harness import LISTENING, Child, proc_status, start_gateway, start_helper
from run import parse_args

EHLO = b"EHLO hostile.test\r\n"


def attacks(rng: random.Random) -> list[bytes]:
    nested = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
        for i in range(100)
    )
    return [
        b"\x00" * 5000 + b"\r\n" + bytes(rng.randrange(256) for _ in range(5000)) + b"\r\n",
        b"MAIL FROM:<a@b.c>\r\n",  # before EHLO
        EHLO
        + b"MAIL FROM:<a@b.c>\r\n"
        + b"".join(b"RCPT TO:<7900%07d@sms.local>\r\n" % i for i in range(10_000)),
        EHLO + b"MAIL FROM:<a@b.c>\r\nRCPT TO:<79001234567@sms.local>\r\nDATA\r\n"
        b"Subject: x\r\n\r\nfirst\n.\nMAIL FROM:<evil@x>\r\n",  # smuggling, then vanish
        EHLO + b"MAIL FROM:<a@b.c>\r\nRCPT TO:<79001234567@sms.local>\r\nDATA\r\n"
        b"Subject: " + b"A" * 900_000 + b"\r\n\r\nbody\r\n.\r\n",
        EHLO + b"MAIL FROM:<a@b.c>\r\nRCPT TO:<79001234567@sms.local>\r\nDATA\r\n"
        b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + nested + b"x\r\n.\r\n",
        EHLO + b"MAIL FROM:<\xff\xfe@b.c>\r\nRCPT TO:<\xc3\x28@sms.local>\r\n",
        EHLO + b"MAIL FROM:<a@b.c>\r\nRCPT TO:<79001234567@sms.local>\r\nDATA\r\n"
        b"Subject: =?bogus?Q?=ZZ?= =?utf-8?B?!!!?=\r\nContent-Type: text/plain; "
        b"charset=x-nonsense\r\n\r\n\xff\xfe\x00\r\n.\r\n",
        EHLO + b"MAIL FROM:<a@b.c>\r\nRCPT TO:<79001234567@sms.local>\r\nDATA\r\npartial",
    ]


async def hostile_session(port: int, payload: bytes) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    try:
        writer.write(payload)
        await writer.drain()
        # Read a little of what it says, then vanish without QUIT, as such clients do.
        async with asyncio.timeout(2):
            while await reader.read(65536):
                pass
    except (OSError, TimeoutError):
        pass
    finally:
        writer.transport.abort()


async def normal_message(port: int, marker: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [
            EHLO,
            b"MAIL FROM:<ok@corp.test>\r\n",
            b"RCPT TO:<79001234567@sms.local>\r\n",
            b"DATA\r\n",
            f"Subject: {marker}\r\n\r\nfine\r\n.\r\n".encode(),
            b"QUIT\r\n",
        ]
        writer.write(b"".join(lines))
        await writer.drain()
        async with asyncio.timeout(10):
            reply = await reader.read()
        return next((line for line in reply.split(b"\r\n") if b"queued as" in line), b"")
    finally:
        writer.close()


async def main(rounds: int, sessions: int) -> None:
    args = parse_args(["--connections", "50", "--many-connections", "50"])
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="smtp2pulse-hostile-") as tmp:
        platform, platform_port = await start_helper("fakeplatform.py", "--max-seconds", 900)
        try:
            gateway, port, _log = await start_gateway(Path(tmp), platform_port, args)
            payloads = attacks(rng)
            print(f"start: RSS {proc_status(gateway.process.pid)['VmRSS']:.1f} MB")
            for round_no in range(1, rounds + 1):
                for start in range(0, sessions, 25):
                    await asyncio.gather(
                        *(
                            hostile_session(port, rng.choice(payloads))
                            for _ in range(min(25, sessions - start))
                        )
                    )
                reply = await normal_message(port, f"normal-{round_no}")
                status = proc_status(gateway.process.pid)
                print(
                    f"round {round_no}: {round_no * sessions} hostile sessions, RSS "
                    f"{status['VmRSS']:.1f} MB (peak {status['VmHWM']:.1f}), normal client: "
                    f"{reply.decode(errors='replace') or 'NO 250'}"
                )
        finally:
            await Child.stop_all()
            del platform


# --- --soak: a broken platform under abusive load (issue 29, item 8) ----------------------------

PLATFORM_MODES = [
    "wrong_length",
    "status_500",
    "huge",
    "slow_body",
    "ok",
    "non_utf8",
    "endless_chunked",
    "gzip_bomb",
    "not_found",
    "never_read",
]
HTTP_LISTENING = re.compile(r"HTTP status listening on 127\.0\.0\.1:(\d+)")
CYRILLIC = "Уважаемый клиент, ваш заказ № 42 собран и ждёт вас в пункте выдачи. "


def soak_config(workdir: Path, platform_url: str, sender: str) -> Path:
    config = {
        "smtp": {
            "listen": "127.0.0.1:0",
            "hostname": "soak",
            "max_message_size": "2MiB",
            "max_recipients": 100,
            "allow_networks": ["127.0.0.0/8"],
            "timeout": "30s",
            "max_connections": 500,
            "max_connections_per_address": 500,
        },
        "api": {
            "base_url": platform_url,
            "token": "soak-token",
            "timeout": "3s",
            "max_concurrency": 8,
            "batch_size": 20,
            "sender": sender,
        },
        "http": {
            "listen": "127.0.0.1:0",
            "public_url": "https://gw.example.com",
            "callback_secret": "soak-callback-secret-0123456789",
        },
        "spool": {"path": str(workdir / "spool.sqlite3"), "retry": ["2s"], "give_up_after": "1h"},
        "log": {"level": "info"},
        "domains": {"sms.local": {"type": "sms", "sender": "Soak"}},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


def usage(pid: int) -> tuple[float, int]:
    """RSS in MB and open fds of the gateway and its sender process together."""
    rss = proc_status(pid)["VmRSS"]
    fds = sum(len(os.listdir(f"/proc/{p}/fd")) for p in (pid, *children(pid)))
    return rss, fds


async def smtp_send(port: int, recipients: list[str], body: str) -> None:
    message = (
        f"Subject: soak\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n.\r\n"
    ).encode()
    lines = [
        EHLO,
        b"MAIL FROM:<soak@corp.test>\r\n",
        *(b"RCPT TO:<%s@sms.local>\r\n" % r.encode() for r in recipients),
        b"DATA\r\n",
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(lines))
        await writer.drain()
        async with asyncio.timeout(30):
            while not (await reader.readline()).startswith(b"354"):
                pass
            writer.write(message + b"QUIT\r\n")
            await writer.drain()
            while await reader.read(65536):
                pass
    except (OSError, TimeoutError):
        pass
    finally:
        writer.transport.abort()


async def until(deadline: float, pause: float, action: Callable[[], Awaitable[object]]) -> int:
    """`action` again and again until the deadline; how many times."""
    done = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, TimeoutError, aiohttp.ClientError):
            async with asyncio.timeout(30):
                await action()
        done += 1
        await asyncio.sleep(pause)
    return done


async def soak(options: argparse.Namespace) -> None:
    from tests.hostileplatform import HostilePlatform

    rng = random.Random(29)
    platform = HostilePlatform()
    await platform.start()
    await platform.switch(*PLATFORM_MODES)
    with tempfile.TemporaryDirectory(prefix="smtp2pulse-soak-") as tmp:
        config = soak_config(Path(tmp), platform.base_url, options.sender)
        log_path = Path(tmp) / "gateway.log"
        gateway = await Child.spawn_logged(
            "gateway", [sys.executable, "-m", "gateway", "serve", "-c", str(config)], log_path
        )
        try:
            await soak_run(options, gateway, log_path, platform, rng)
        finally:
            await Child.stop_all()
            await platform.stop()


async def listening(log_path: Path) -> tuple[int, int]:
    """The gateway's SMTP and HTTP ports, from its log."""
    async with asyncio.timeout(30):
        while True:
            text = await asyncio.to_thread(log_path.read_text, errors="replace")
            smtp, http = LISTENING.search(text), HTTP_LISTENING.search(text)
            if smtp and http:
                return int(smtp.group(1)), int(http.group(1))
            await asyncio.sleep(0.1)


async def soak_run(
    options: argparse.Namespace, gateway: Child, log_path: Path, platform: Any, rng: random.Random
) -> None:
    smtp_port, http_port = await listening(log_path)
    http = f"http://127.0.0.1:{http_port}"
    rows = [("before", *usage(gateway.pid))]
    start = time.monotonic()
    deadline = start + options.soak
    big = CYRILLIC * 4000  # ~540 KB of UTF-8
    payloads = attacks(rng)
    fifty = [f"7901{n:07d}" for n in range(50)]
    twenty = [f"7902{n:07d}" for n in range(20)]

    async def callbacks(session: aiohttp.ClientSession) -> None:
        for _ in range(20):  # forged, malformed and huge: each must cost nothing
            query = rng.choice(
                [
                    f"d={rng.randrange(10**6)}&q=ABC&sig=deadbeef&status=delivered",
                    "d=%C2%B2&q=x&sig=x",
                    "d=1&q=A&sig=0&status=" + "z" * 4000,
                ]
            )
            async with session.get(f"{http}/callback?{query}") as reply:
                await reply.read()

    async def searches(session: aiohttp.ClientSession) -> None:
        for path in (
            f"/?q=7901{rng.randrange(50):07d}",
            "/?q=%25%27%22<script>",
            "/metrics",
            "/healthz",
        ):
            async with session.get(http + path) as reply:
                await reply.read()

    async def sample() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(min(options.every, max(0.0, deadline - time.monotonic())))
            rows.append((f"{time.monotonic() - start:.0f} s", *usage(gateway.pid)))

    sampling = asyncio.create_task(sample())
    async with aiohttp.ClientSession() as session:

        def several(
            n: int, pause: float, action: Callable[[], Awaitable[object]]
        ) -> Awaitable[list[int]]:
            return asyncio.gather(*(until(deadline, pause, action) for _ in range(n)))

        counts = [
            sum(done)
            for done in await asyncio.gather(
                several(1, 3.0, lambda: smtp_send(smtp_port, fifty, big)),
                several(3, 0.2, lambda: smtp_send(smtp_port, twenty, "Код 1234")),
                several(5, 0.1, lambda: hostile_session(smtp_port, rng.choice(payloads))),
                several(2, 0.1, lambda: callbacks(session)),
                several(1, 0.5, lambda: searches(session)),
            )
        ]
        await sampling
    rows[-1] = ("end", *rows[-1][1:])
    platform_requests = len(platform.requests)
    await asyncio.sleep(options.quiet)
    rows.append((f"after {options.quiet:g} s quiet", *usage(gateway.pid)))
    peak = proc_status(gateway.pid)["VmHWM"]
    print(
        f"\n{options.soak:g} s soak, sender {options.sender}: {counts[0]} big mails x 50,"
        f" {counts[1]} mails x 20, {counts[2]} garbage SMTP sessions, {counts[3] * 20}"
        f" callbacks, {counts[4] * 4} page/metrics requests; {platform_requests} platform"
        f" requests, {platform.connections} connections; peak RSS {peak:.0f} MB\n"
    )
    print("| when | RSS (MB) | open fds |\n|---|---|---|")
    for when, rss, fds in rows:
        print(f"| {when} | {rss:.0f} | {fds} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument(
        "--soak",
        type=float,
        default=0.0,
        help="seconds of a broken platform and abusive load (0: SMTP rounds)",
    )
    parser.add_argument("--quiet", type=float, default=45.0)
    parser.add_argument("--every", type=float, default=15.0)
    parser.add_argument("--sender", choices=("inline", "process"), default="inline")
    options = parser.parse_args()
    if options.soak:
        asyncio.run(soak(options))
    else:
        asyncio.run(main(options.rounds, options.sessions))
