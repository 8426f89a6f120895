"""One hostile client at a time: how long did everyone else wait, and what did it cost?

For each attack of issue 11 that a client can make, a fresh `smtp2pulse serve` (not dry run,
posting to bench/fakeplatform.py) is started; a probe client sends an ordinary message every
0.2 s while the attack runs; then one line is printed per attack:

- worst wait: the longest a probe transaction (connect, EHLO, MAIL, RCPT, DATA, QUIT) took
  while the attack ran (the baseline line shows the same with no attack);
- spool growth: the spool's files (db, -wal, -shm) after the attack minus before;
- peak RSS growth: the gateway's VmHWM (with its children) after minus before;
- what the attacker got back (the last reply line it read) and how many tracebacks the log has.

    python bench/attacks.py               # every attack, once
    python bench/attacks.py --only redos punycode

Bounded: each attack is given at most --attack-seconds (default 40 s); then it is abandoned.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import LISTENING, MB, START_TIMEOUT, Child, proc_status, start_helper

EHLO = b"EHLO attacker.test\r\n"
ENVELOPE = b"MAIL FROM:<a@corp.test>\r\nRCPT TO:<79001234567@sms.local>\r\n"


@dataclass
class Gateway:
    child: Child
    smtp_port: int
    smtps_port: int | None
    http_port: int | None
    workdir: Path


@dataclass(frozen=True)
class Attack:
    name: str
    what: str
    run: Callable[[Gateway], Awaitable[str]]


# --- talking to the gateway ---------------------------------------------------------------


async def converse(
    port: int, payload: bytes, *, tls: bool = False, limit: float = 40.0, source: str | None = None
) -> str:
    """Send `payload` at once, read what comes back until the server closes or `limit`;
    return the last reply line. `source`: the local address to connect from."""
    context = _client_tls() if tls else None
    got = b""
    try:
        async with asyncio.timeout(limit):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, local_addr=None if source is None else (source, 0)
            )
            try:
                writer.write(payload)
                await writer.drain()
                while chunk := await reader.read(65536):
                    got += chunk
            finally:
                writer.transport.abort()
    except TimeoutError:
        return _last(got) + " (still open at the limit)"
    except (OSError, ssl.SSLError) as error:
        return _last(got) + f" ({type(error).__name__})"
    return _last(got)


def _last(data: bytes) -> str:
    lines = [line for line in data.split(b"\r\n") if line.strip()]
    return lines[-1][:80].decode(errors="replace") if lines else "(nothing)"


def _client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


PROBE_SOURCE = "127.0.0.2"  # Linux answers for all of 127.0.0.0/8


def mail(body: bytes, headers: bytes = b"Subject: attack\r\n") -> bytes:
    return EHLO + ENVELOPE + b"DATA\r\n" + headers + b"\r\n" + body + b"\r\n.\r\nQUIT\r\n"


async def probe_loop(port: int, stop: asyncio.Event, waits: list[float]) -> None:
    """An ordinary client, over and over: each transaction's time goes into `waits`.

    It connects from PROBE_SOURCE, another address than the attacks' 127.0.0.1, as another
    client of a real gateway would: max_connections_per_address bounds the attacker, and the
    probe measures what is left for everyone else."""
    while not stop.is_set():
        started = time.monotonic()
        reply = await converse(port, mail(b"fine"), limit=60, source=PROBE_SOURCE)
        waits.append(time.monotonic() - started)
        if "Bye" not in reply and "2.0.0" not in reply:
            waits[-1] = float("inf")  # an ordinary message that did not go through
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


# --- the attacks ---------------------------------------------------------------------------


async def redos(gw: Gateway) -> str:
    return await converse(
        gw.smtp_port,
        EHLO + b"MAIL FROM:<a@corp.test>\r\nRCPT TO:<" + b"1" * 28 + b"x@sms.local>\r\nQUIT\r\n",
    )


async def fanout(gw: Gateway) -> str:
    rcpts = b"".join(b"RCPT TO:<790012%05d@sms.local>\r\n" % i for i in range(100))
    body = (b"x" * 76 + b"\r\n") * (950_000 // 78)
    one = (
        EHLO
        + b"MAIL FROM:<a@corp.test>\r\n"
        + rcpts
        + b"DATA\r\nSubject: big\r\n\r\n"
        + body
        + b".\r\nQUIT\r\n"
    )
    replies = await asyncio.gather(*(converse(gw.smtp_port, one) for _ in range(4)))
    return replies[0]


async def punycode(gw: Gateway) -> str:
    return await converse(
        gw.smtp_port,
        mail(b"a" * 500_000, b"Subject: p\r\nContent-Type: text/plain; charset=punycode\r\n"),
    )


async def content_type_params(gw: Gateway) -> str:
    params = b"".join(b"; p%d=v" % i for i in range(1_000_000 // 10))
    return await converse(
        gw.smtp_port, mail(b"x", b"Subject: c\r\nContent-Type: text/plain" + params + b"\r\n")
    )


async def empty_parts(gw: Gateway) -> str:
    parts = b"--b\r\n\r\n" * 120_000
    return await converse(
        gw.smtp_port,
        mail(parts + b"--b--", b"Subject: e\r\nContent-Type: multipart/mixed; boundary=b\r\n"),
    )


async def auth_line(gw: Gateway) -> str:
    return await converse(
        gw.smtp_port, EHLO + b"AUTH LOGIN\r\n" + b"A" * 1_500_000 + b"\r\nQUIT\r\n"
    )


async def tls_flood(gw: Gateway) -> str:
    """60 silent TCP connections to the SMTPS port from one address (its cap: 10): how many
    are still held?"""
    assert gw.smtps_port is not None
    pairs = []
    for _ in range(60):
        with contextlib.suppress(OSError):
            pairs.append(await asyncio.open_connection("127.0.0.1", gw.smtps_port))
    await asyncio.sleep(3)
    held = 0
    for reader, _writer in pairs:
        try:
            held += await asyncio.wait_for(reader.read(1), 0.05) != b""
        except TimeoutError:
            held += 1  # nothing said and not closed: still held
        except OSError:
            pass
    for _reader, writer in pairs:
        writer.transport.abort()
    return f"{held} of {len(pairs)} silent connections still held after 3 s (cap 10 an address)"


async def callback_body(gw: Gateway) -> str:
    assert gw.http_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.http_port)
    body = b"x" * (1 << 20)
    writer.write(
        b"POST /callback?q=1&d=1&s=bad HTTP/1.1\r\nHost: x\r\nContent-Type: "
        b"application/x-www-form-urlencoded\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % len(body) + body
    )
    with contextlib.suppress(OSError):
        await writer.drain()
    async with asyncio.timeout(20):
        status = await reader.readline()
    writer.transport.abort()
    return status.decode(errors="replace").strip()


async def callback_digits(gw: Gateway) -> str:
    assert gw.http_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.http_port)
    writer.write(
        b"GET /callback?q=1&d=" + b"9" * 5000 + b"&s=x HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n"
    )
    async with asyncio.timeout(20):
        status = await reader.readline()
    writer.transport.abort()
    return status.decode(errors="replace").strip()


ATTACKS = [
    Attack("baseline", "no attack: the probe alone", lambda gw: asyncio.sleep(3, "—")),
    Attack("redos", "RCPT with 28 digits then x (item 1)", redos),
    Attack("fanout", "4 × 0.95 MB message to 100 recipients (item 2)", fanout),
    Attack("punycode", "500 KB body, charset=punycode (item 3)", punycode),
    Attack("ctype", "1 MB of Content-Type parameters (item 8)", content_type_params),
    Attack("parts", "120k empty MIME parts (item 8)", empty_parts),
    Attack("tlsflood", "60 silent connections to SMTPS, cap 10 an address (item 5)", tls_flood),
    Attack("authline", "1.5 MB AUTH line (item 17)", auth_line),
    Attack("cbbody", "1 MiB unsigned callback body (item 13)", callback_body),
    Attack("cbdigits", "callback d= 5000 digits (item 13)", callback_digits),
]


# --- one gateway per attack ----------------------------------------------------------------


def make_cert(workdir: Path) -> tuple[Path, Path]:
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def password_hash() -> str:
    from gateway.smtp.passwords import hash_password

    return hash_password("secret")


def write_config(workdir: Path, platform_port: int) -> Path:
    cert, key = make_cert(workdir)
    config = {
        "smtp": {
            "listen": "127.0.0.1:0",
            "hostname": "attack-gateway",
            "max_message_size": "1MiB",
            "max_recipients": 100,
            "allow_networks": ["127.0.0.0/8"],
            "timeout": "5m",
            "max_connections": 40,
            "max_connections_per_address": 10,
            "tls": {"cert": str(cert), "key": str(key), "implicit_listen": "127.0.0.1:0"},
            "auth": {
                "required": False,
                "allow_without_tls": True,
                "users": {"crm": {"password_hash": password_hash()}},
            },
        },
        "api": {
            "base_url": f"http://127.0.0.1:{platform_port}/api/v1/bulk",
            "token": "bench-token",
            "timeout": "10s",
        },
        "spool": {"path": str(workdir / "spool.sqlite3"), "retry": ["1s"], "give_up_after": "1h"},
        "http": {
            "listen": "127.0.0.1:0",
            "public_url": "http://127.0.0.1:9",
            "callback_secret": "attack-bench-secret-0123456789",
        },
        "shutdown_timeout": "10s",
        "domains": {"sms.local": {"type": "sms", "sender": "Bench"}},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def start(workdir: Path, platform_port: int) -> Gateway:
    config = write_config(workdir, platform_port)
    log_path = workdir / "gateway.log"
    with log_path.open("wb") as log:
        child = await Child.spawn(
            "gateway",
            [sys.executable, "-m", "gateway", "serve", "-c", str(config)],
            stdout=log,
            stderr=log,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and child.process.returncode is None:
        text = log_path.read_text(errors="replace")
        ports = [int(p) for p in LISTENING.findall(text)]
        http = _port_after(text, "HTTP status listening on 127.0.0.1:")
        if len(ports) >= 2 and http:  # the plain listener is logged first, then SMTPS
            return Gateway(child, ports[0], ports[1], http, workdir)
        await asyncio.sleep(0.05)
    await child.stop()
    raise RuntimeError("gateway did not start:\n" + log_path.read_text(errors="replace")[-3000:])


def _port_after(text: str, marker: str) -> int | None:
    at = text.find(marker)
    if at < 0:
        return None
    digits = ""
    for ch in text[at + len(marker) :]:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def spool_bytes(workdir: Path) -> int:
    return sum(p.stat().st_size for p in workdir.glob("spool.sqlite3*"))


async def one(attack: Attack, platform_port: int, limit: float) -> str:
    with tempfile.TemporaryDirectory(prefix="smtp2pulse-attack-") as tmp:
        gw = await start(Path(tmp), platform_port)
        try:
            await asyncio.sleep(0.5)
            spool0, rss0 = spool_bytes(gw.workdir), proc_status(gw.child.pid)["VmHWM"]
            stop, waits = asyncio.Event(), list[float]()
            probe = asyncio.create_task(probe_loop(gw.smtp_port, stop, waits))
            await asyncio.sleep(0.5)
            started = time.monotonic()
            try:
                got = await asyncio.wait_for(attack.run(gw), limit)
            except TimeoutError:
                got = f"(attack still running at {limit:.0f} s)"
            except OSError as error:
                got = f"({type(error).__name__})"
            took = time.monotonic() - started
            await asyncio.sleep(1.0)
            stop.set()
            await probe
            spool1, rss1 = spool_bytes(gw.workdir), proc_status(gw.child.pid)["VmHWM"]
            tracebacks = (gw.workdir / "gateway.log").read_text(errors="replace").count("Traceback")
            worst = max(waits) if waits else float("nan")
            return (
                f"{attack.name:<9} {worst * 1000:9.0f} {took:7.1f} "
                f"{(spool1 - spool0) / MB:8.1f} {rss1 - rss0:8.1f} {tracebacks:5d}  "
                f"{got[:70]}   [{attack.what}]"
            )
        finally:
            await gw.child.stop(grace=20)


async def main(only: list[str], limit: float) -> None:
    platform, platform_port = await start_helper("fakeplatform.py", "--max-seconds", 1800)
    try:
        print(
            f"{'attack':<9} {'worst ms':>9} {'took s':>7} {'spool MB':>8} {'RSS MB':>8} "
            f"{'tb':>5}  attacker got"
        )
        for attack in ATTACKS:
            if not only or attack.name in only:
                print(await one(attack, platform_port, limit), flush=True)
    finally:
        await Child.stop_all()
        del platform


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        nargs="*",
        default=[],
        metavar="ATTACK",
        help="names: " + ", ".join(a.name for a in ATTACKS),
    )
    parser.add_argument("--attack-seconds", type=float, default=40.0)
    options = parser.parse_args()
    asyncio.run(main(options.only, options.attack_seconds))
