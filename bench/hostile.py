"""Hostile clients in bulk: does the gateway's memory stay flat, and does it keep serving?

Runs rounds of abusive SMTP sessions (garbage lines, smuggling attempts, 10,000 RCPTs, huge
header lines, NUL bytes, bad UTF-8, deep MIME nesting, clients that vanish mid-DATA) against a
real `smtp2pulse serve`, and after each round prints the gateway's RSS and whether a normal
client still gets its message through. Bounded: --rounds × --sessions sessions, then it stops.

    python bench/hostile.py --rounds 5 --sessions 200
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import Child, parse_args, proc_status, start_gateway, start_helper

EHLO = b"EHLO hostile.test\r\n"


def attacks(rng: random.Random) -> list[bytes]:
    nested = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
                      for i in range(100))
    return [
        b"\x00" * 5000 + b"\r\n" + bytes(rng.randrange(256) for _ in range(5000)) + b"\r\n",
        b"MAIL FROM:<a@b.c>\r\n",                                     # before EHLO
        EHLO + b"MAIL FROM:<a@b.c>\r\n" + b"".join(
            b"RCPT TO:<7900%07d@sms.local>\r\n" % i for i in range(10_000)),
        EHLO + b"MAIL FROM:<a@b.c>\r\nRCPT TO:<79001234567@sms.local>\r\nDATA\r\n"
        b"Subject: x\r\n\r\nfirst\n.\nMAIL FROM:<evil@x>\r\n",         # smuggling, then vanish
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
        lines = [EHLO, b"MAIL FROM:<ok@corp.test>\r\n", b"RCPT TO:<79001234567@sms.local>\r\n",
                 b"DATA\r\n", f"Subject: {marker}\r\n\r\nfine\r\n.\r\n".encode(), b"QUIT\r\n"]
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
                    await asyncio.gather(*(hostile_session(port, rng.choice(payloads))
                                           for _ in range(min(25, sessions - start))))
                reply = await normal_message(port, f"normal-{round_no}")
                status = proc_status(gateway.process.pid)
                print(f"round {round_no}: {round_no * sessions} hostile sessions, RSS "
                      f"{status['VmRSS']:.1f} MB (peak {status['VmHWM']:.1f}), normal client: "
                      f"{reply.decode(errors='replace') or 'NO 250'}")
        finally:
            await Child.stop_all()
            del platform


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=200)
    options = parser.parse_args()
    asyncio.run(main(options.rounds, options.sessions))
