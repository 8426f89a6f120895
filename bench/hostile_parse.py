"""Hostile input that costs CPU to parse: how long does another client wait meanwhile?

Starts a real `smtp2pulse serve` (as bench/run.py does) and, per attack, sends the attack on
one connection while a second client keeps sending ordinary one-recipient messages on others;
prints the attack's reply and how long it took, the worst whole transaction of the second
client while the attack ran, and the longest line the gateway logged.

    python bench/hostile_parse.py                  # every attack
    python bench/hostile_parse.py --only punycode --digits 26

Attacks (issue 11, items 1, 3 and 8):
  rcpt_redos     RCPT TO:<DIGITS x@sms.local>: a phone pattern that backtracked exponentially
  punycode       a 500 KB body declared charset=punycode (a quadratic codec)
  ct_params      a Content-Type header with 1 MB of parameters
  empty_parts    120 000 empty MIME parts (and a log line naming each)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import Child, parse_args, start_gateway, start_helper

EHLO = b"EHLO hostile.test\r\n"
ENVELOPE = EHLO + b"MAIL FROM:<a@corp.test>\r\nRCPT TO:<79001234567@sms.local>\r\nDATA\r\n"
HEAD = b"From: a@corp.test\r\nSubject: hostile\r\nMIME-Version: 1.0\r\n"


def attacks(digits: int) -> dict[str, bytes]:
    params = b"".join(b';\r\n p%d="v"' % n for n in range(900_000 // 13))
    parts = b"--b\r\n\r\n" * 120_000
    return {
        "rcpt_redos": EHLO + b"MAIL FROM:<a@corp.test>\r\nRCPT TO:<" + b"1" * digits
                      + b"x@sms.local>\r\nQUIT\r\n",
        "punycode": ENVELOPE + HEAD + b"Content-Type: text/plain; charset=punycode\r\n\r\n"
                    + b"a" * 500_000 + b"\r\n.\r\nQUIT\r\n",
        "ct_params": ENVELOPE + HEAD + b"Content-Type: text/plain" + params
                     + b"\r\n\r\nhello\r\n.\r\nQUIT\r\n",
        "empty_parts": ENVELOPE + HEAD + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
                       + parts + b"--b--\r\n.\r\nQUIT\r\n",
    }


async def transaction(port: int, payload: bytes) -> tuple[float, bytes]:
    """Send a whole pipelined session; the time until it ended and its last reply but QUIT's."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(120):
            replies = (await reader.read()).split(b"\r\n")
    finally:
        writer.close()
    finals = [line for line in replies if line[3:4] == b" " and not line.startswith(b"221")]
    return time.monotonic() - started, finals[-1] if finals else b"(nothing)"


async def probe(port: int, stop: asyncio.Event) -> list[float]:
    """Ordinary messages, one after the other, until told to stop; each one's duration."""
    normal = ENVELOPE + b"Subject: normal\r\n\r\nfine\r\n.\r\nQUIT\r\n"
    waits: list[float] = []
    while not stop.is_set():
        elapsed, reply = await transaction(port, normal)
        if not reply.startswith(b"250"):
            print(f"  second client got {reply!r}")
        waits.append(elapsed)
        await asyncio.sleep(0.02)
    return waits


def longest_line(log: Path, offset: int) -> int:
    with log.open("rb") as handle:
        handle.seek(offset)
        return max((len(line) for line in handle), default=0)


async def main(only: list[str] | None, digits: int) -> None:
    args = parse_args(["--connections", "50", "--many-connections", "50", "--log-level", "info"])
    with tempfile.TemporaryDirectory(prefix="smtp2pulse-hostile-parse-") as tmp:
        platform, platform_port = await start_helper("fakeplatform.py", "--max-seconds", 900)
        try:
            _gateway, port, log = await start_gateway(Path(tmp), platform_port, args)
            print(f"{'attack':12} {'reply to the attack':44} {'took':>7} {'2nd client worst':>17}"
                  f" {'probes':>6} {'longest log line':>16}")
            for name, payload in attacks(digits).items():
                if only and name not in only:
                    continue
                offset = log.stat().st_size
                stop = asyncio.Event()
                prober = asyncio.create_task(probe(port, stop))
                await asyncio.sleep(0.2)   # the second client is under way
                took, reply = await transaction(port, payload)
                await asyncio.sleep(0.2)
                stop.set()
                waits = await prober
                await asyncio.sleep(0.5)   # the attack's log lines are written
                print(f"{name:12} {reply.decode(errors='replace')[:44]:44} {took:6.2f}s "
                      f"{max(waits):16.2f}s {len(waits):6d} {longest_line(log, offset):14d} B")
        finally:
            await Child.stop_all()
            del platform


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="run only this attack (repeatable)")
    parser.add_argument("--digits", type=int, default=28, help="digits in the RCPT attack")
    options = parser.parse_args()
    asyncio.run(main(options.only, options.digits))
