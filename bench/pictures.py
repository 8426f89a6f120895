"""A camera storm: how fast plain text mail is accepted while picture mail streams in.

One gateway (`python -m gateway serve`, SQLite spool, a fake platform), a domain with
`images: true`. For --seconds, --text connections send text mail in lock step (each waits for
its 250, then sends the next), small (a few hundred bytes, parsed on the event loop) or, with
--text-size, larger (parsed in a parser thread); meanwhile --cameras connections each send, in
lock step too, a mail with a --megapixels JPEG (re-encoded by the gateway for Viber). Printed:
text mails accepted a second and their 250 waits (median, 99th percentile, worst), and the
pictures accepted. Run it with --cameras 0 for the baseline.

    python bench/pictures.py --cameras 0
    python bench/pictures.py --cameras 4
    python bench/pictures.py --cameras 4 --text-size 20000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import LISTENING, START_TIMEOUT, Child, start_helper


def camera_mail(megapixels: float) -> bytes:
    """A camera's alert with its snapshot: a noisy scene, as a sensor gives it."""
    from PIL import Image

    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = width * 3 // 4
    noise = Image.effect_noise((width, height), 20).convert("RGB")
    gradient = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    picture = Image.blend(noise, gradient, 0.6)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=85)
    encoded = base64.encodebytes(out.getvalue()).replace(b"\n", b"\r\n")
    print(f"camera picture: {width}x{height}, {len(out.getvalue())} bytes", flush=True)
    return (
        b"Subject: Motion detected\r\nFrom: cam@corp.test\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain\r\n\r\nCamera 3: motion at the gate\r\n--b\r\n"
        b"Content-Type: image/jpeg\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="snap.jpg"\r\n\r\n' + encoded + b"--b--\r\n"
    )


def text_mail(size: int) -> bytes:
    line = b"Door 7 opened by card 4711, all well at the gate house.\r\n"
    body = line * max(1, size // len(line))
    return b"Subject: Door\r\nFrom: acs@corp.test\r\n\r\n" + body


async def sender(port: int, rcpt: str, mail: bytes, until: float, waits: list[float]) -> None:
    """One SMTP connection sending `mail` in lock step until `until`; each 250's wait."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                return line

    await reply()
    writer.write(b"EHLO bench\r\n")
    await reply()
    while time.monotonic() < until:
        writer.write(b"MAIL FROM:<bench@corp.test>\r\nRCPT TO:<" + rcpt.encode() + b">\r\nDATA\r\n")
        for _ in range(3):
            await reply()
        started = time.monotonic()
        writer.write(mail + b".\r\n")
        answer = await reply()
        if not answer.startswith(b"250"):
            raise RuntimeError(f"refused: {answer!r}")
        waits.append(time.monotonic() - started)
    writer.write(b"QUIT\r\n")
    await reply()
    writer.close()


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="smtp2pulse-pictures-"))
    platform, platform_port = await start_helper("fakeplatform.py", "--max-seconds", 3600)
    config = {
        "smtp": {
            "listen": "127.0.0.1:0",
            "max_message_size": "20MiB",
            "allow_networks": ["127.0.0.0/8"],
            "max_connections": 100,
            "max_connections_per_address": 100,
        },
        "api": {"base_url": f"http://127.0.0.1:{platform_port}/api/v1/bulk", "token": "t"},
        "http": {
            "listen": "127.0.0.1:0",
            "public_url": "https://gw.example.com",
            "callback_secret": "bench-secret-0123456789abcdef",
        },
        "spool": {"path": str(workdir / "spool.sqlite3")},
        "log": {"level": "info"},  # the "listening" line gives the port
        "domains": {
            "sms.local": {"type": "sms", "sender": "Bench"},
            "viber.local": {"type": "viber", "sender": "Cams", "images": True},
        },
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = workdir / "gateway.log"
    gateway = await Child.spawn_logged(
        "gateway", [sys.executable, "-m", "gateway", "serve", "-c", str(path)], log_path
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while (match := LISTENING.search(log_path.read_text(errors="replace"))) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(log_path.read_text(errors="replace")[-2000:])
            await asyncio.sleep(0.05)
        port = int(match.group(1))
        camera = camera_mail(args.megapixels) if args.cameras else b""
        text = text_mail(args.text_size)
        until = time.monotonic() + args.seconds
        text_waits: list[float] = []
        picture_waits: list[float] = []
        await asyncio.gather(
            *(
                sender(port, "79001234567@sms.local", text, until, text_waits)
                for _ in range(args.text)
            ),
            *(
                sender(port, "79001234567@viber.local", camera, until, picture_waits)
                for _ in range(args.cameras)
            ),
        )
        text_waits.sort()
        print(
            f"text ({len(text)} bytes, {args.text} connections): "
            f"{len(text_waits) / args.seconds:.1f}/s, 250 after "
            f"median {statistics.median(text_waits) * 1000:.0f} ms, "
            f"p99 {text_waits[int(len(text_waits) * 0.99)] * 1000:.0f} ms, "
            f"worst {text_waits[-1] * 1000:.0f} ms"
        )
        if picture_waits:
            print(
                f"pictures ({args.cameras} connections): {len(picture_waits) / args.seconds:.2f}/s,"
                f" 250 after median {statistics.median(picture_waits) * 1000:.0f} ms"
            )
    finally:
        await gateway.stop()
        await platform.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--text", type=int, default=4, help="text mail connections")
    parser.add_argument("--text-size", type=int, default=300, help="bytes of a text mail body")
    parser.add_argument("--cameras", type=int, default=4, help="picture mail connections")
    parser.add_argument("--megapixels", type=float, default=12)
    asyncio.run(main(parser.parse_args()))
