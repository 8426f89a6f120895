"""An asyncio SMTP load generator: raw SMTP over asyncio streams, one task per connection.

Why not smtplib: it blocks, so C connections would need C threads, and on a 2-core machine
the GIL hand-offs between them would be measured instead of the server. Here every connection
is a coroutine sending its messages back to back (MAIL, RCPT..., DATA) on one socket.

Each message's Subject is a unique marker, `bench-<run>-<n>`, so that whoever receives it
downstream (the fake platform) can be matched against what got a 250 here.

Usable on its own too:  python bench/loadgen.py --port 2525 --messages 1000 --connections 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate

RUSSIAN = (
    "Здравствуйте! Ваш заказ № 4217 собран и ждёт вас в пункте выдачи на улице "
    "Ленина, 15. Срок хранения — пять дней. Спасибо, что выбрали наш магазин. "
)
LATIN = "Hello! Your order 4217 is packed and waiting at the pickup point. Thank you. "
CHARSETS = {"utf-8": "utf-8", "cp1251": "windows-1251", "ascii": "us-ascii"}
REPLY_TIMEOUT = 60.0  # one reply; a server slower than this is reported, not waited for
CONNECT_TIMEOUT = 10.0
MAX_RECONNECTS = 5  # per connection task: after a 421 or a reset, open a new socket
RECONNECT_PAUSE = 0.2  # seconds, times the failures so far: a refusing server is not hammered
# Connections being opened at the same time. asyncio's create_server listens with backlog 100
# (Sink and the gateway alike); 200 connects in one burst overflow it, the kernel drops SYNs
# and the client retries a second later, which would measure the SYN retransmit timer instead
# of the server. Real clients do not open 200 sockets in the same millisecond either.
CONNECT_BURST = 50


@dataclass(frozen=True, slots=True)
class Accepted:
    """One message that got its 250: who it was for and when (time.time(), seconds)."""

    recipients: tuple[str, ...]
    mail_sent_at: float
    accepted_at: float


@dataclass
class LoadResult:
    started: float = 0.0  # time.time() when the first connection was opened
    first_mail: float = 0.0  # time.time() of the first MAIL FROM sent
    last_reply: float = 0.0  # time.time() of the last transaction's end, whatever its reply
    finished: float = 0.0  # all connections closed (after any back-off of refused ones)
    attempted: int = 0
    accepted: dict[str, Accepted] = field(default_factory=dict)  # marker -> Accepted
    latencies_ms: list[float] = field(default_factory=list)  # MAIL sent -> 250 after DATA
    refused: Counter[str] = field(default_factory=Counter)  # "STAGE:code" -> count

    @property
    def wall(self) -> float:
        # Up to the last reply: connections sleeping off a refusal are not the server's time.
        return max((self.last_reply or self.finished) - self.started, 1e-9)

    @property
    def rate(self) -> float:
        """Accepted messages per second of wall time."""
        return len(self.accepted) / self.wall

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no data (so an empty run cannot look fast)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def recipients_for(n: int, count: int, domain: str = "sms.local") -> tuple[str, ...]:
    # Distinct within one envelope (the gateway folds duplicates into one delivery).
    return tuple(f"7900000{(n * count + j) % 10000:04d}@{domain}" for j in range(count))


def build_message(marker: str, recipients: tuple[str, ...], body_size: int, charset: str) -> bytes:
    """The DATA payload, dot-stuffed and terminated, CRLF line endings."""
    mime_charset = CHARSETS[charset]
    sample = LATIN if charset == "ascii" else RUSSIAN
    codec = "cp1251" if charset == "cp1251" else "ascii" if charset == "ascii" else "utf-8"
    body = body_text(sample, body_size, codec)
    headers = (
        f"From: Bench <bench@example.com>\r\nTo: {', '.join(recipients)}\r\n"
        f"Subject: {marker}\r\nMessage-ID: <{marker}@bench.example>\r\n"
        f"Date: {formatdate(localtime=True)}\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset={mime_charset}\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode("ascii")
    lines = [
        b"." + line if line.startswith(b".") else line for line in body.encode(codec).split(b"\n")
    ]
    return headers + b"\r\n".join(lines) + b"\r\n.\r\n"


def body_text(sample: str, size: int, codec: str) -> str:
    """About `size` encoded bytes of text, wrapped at ~72 characters like a mail client."""
    words: list[str] = []
    total = 0
    source = sample.split()
    while total < size:
        word = source[len(words) % len(source)]
        words.append(word)
        total += len(word.encode(codec)) + 1
    lines, line = [], ""
    for word in words:
        if len(line) + len(word) + 1 > 72:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\n".join(lines)


class SmtpError(Exception):
    """A reply that ends the connection (421) or a broken socket."""


def count_refusal(refused: Counter[str], stage: str, code: int) -> None:
    refused[f"{stage}:{code}"] += 1
    if code == 421:  # the server is closing this session: the caller must reconnect
        raise SmtpError("421 from server")


class Connection:
    """One SMTP session on asyncio streams; commands answered in lock step (no pipelining)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int, burst: asyncio.Semaphore) -> Connection:
        async with burst:  # until the greeting: that is when the server has accepted us
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, port)
            conn = cls(reader, writer)
            code, _ = await conn.reply()
        if code != 220:
            await conn.close()
            raise SmtpError(f"greeting {code}")
        code, _ = await conn.command(b"EHLO loadgen.bench")
        if code != 250:
            await conn.close()
            raise SmtpError(f"EHLO {code}")
        return conn

    async def reply(self) -> tuple[int, str]:
        """Read one (possibly multi-line) reply: its code and its last line."""
        async with asyncio.timeout(REPLY_TIMEOUT):
            while True:
                line = await self.reader.readline()
                if not line:
                    raise SmtpError("connection closed")
                if line[3:4] != b"-":
                    return int(line[:3]), line.decode("utf-8", "replace").rstrip()

    async def command(self, line: bytes) -> tuple[int, str]:
        self.writer.write(line + b"\r\n")
        return await self.reply()

    async def send(
        self, sender: str, recipients: tuple[str, ...], payload: bytes, refused: Counter[str]
    ) -> tuple[int, str] | None:
        """One transaction. Returns the reply after DATA, or None when refused earlier."""
        code, _ = await self.command(
            f"MAIL FROM:<{sender}> BODY=8BITMIME SIZE={len(payload)}".encode()
        )
        if code != 250:
            count_refusal(refused, "MAIL", code)
            return None
        taken = 0
        for rcpt in recipients:
            code, _ = await self.command(f"RCPT TO:<{rcpt}>".encode())
            if code == 250:
                taken += 1
            else:
                count_refusal(refused, "RCPT", code)
        if not taken:
            await self.command(b"RSET")
            return None
        code, _ = await self.command(b"DATA")
        if code != 354:
            count_refusal(refused, "DATA", code)
            return None
        self.writer.write(payload)
        return await self.reply()

    async def close(self, quit_first: bool = False) -> None:
        if quit_first:
            with contextlib.suppress(SmtpError, OSError, TimeoutError):
                await self.command(b"QUIT")
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@dataclass
class LoadSpec:
    host: str
    port: int
    messages: int = 1000
    connections: int = 10
    recipients: int = 1
    body_size: int = 1024
    charset: str = "utf-8"
    run_id: str = "run"
    pace: float = 0.0  # seconds to wait after each message (idle-latency mode)
    deadline: float = 600.0  # stop taking new messages after this many seconds


async def run_load(spec: LoadSpec) -> LoadResult:
    """Send spec.messages over spec.connections sessions; never runs past spec.deadline."""
    result = LoadResult(started=time.time())
    counter = iter(range(spec.messages))
    stop_at = time.monotonic() + spec.deadline
    burst = asyncio.Semaphore(CONNECT_BURST)
    tasks = [
        asyncio.create_task(_connection_task(spec, counter, stop_at, burst, result))
        for _ in range(min(spec.connections, spec.messages))
    ]
    # A generous outer bound: the deadline plus one reply timeout for the message in flight.
    async with asyncio.timeout(spec.deadline + REPLY_TIMEOUT + CONNECT_TIMEOUT + 5):
        await asyncio.gather(*tasks)
    result.finished = time.time()
    if result.attempted < spec.messages:  # every connection gave up, or the deadline hit
        result.refused["never sent"] = spec.messages - result.attempted
    return result


async def _connection_task(
    spec: LoadSpec,
    counter: Iterator[int],
    stop_at: float,
    burst: asyncio.Semaphore,
    result: LoadResult,
) -> None:
    conn: Connection | None = None
    failures = 0
    try:
        while failures <= MAX_RECONNECTS:
            if time.monotonic() > stop_at:
                result.refused["deadline"] += 1
                break
            if conn is None:
                conn = await _connect(spec, burst, result)
                if conn is None:  # refused or unreachable: back off, keep the index unused
                    failures += 1
                    await asyncio.sleep(RECONNECT_PAUSE * failures)
                    continue
            n = next(counter, None)  # shared by all tasks: each index is taken exactly once
            if n is None:
                break
            try:
                await _one_message(conn, spec, n, result)
            except (SmtpError, OSError, TimeoutError) as exc:
                # The message in flight is lost from our side; the server may still have it.
                result.refused[f"session:{_short(exc)}"] += 1
                await conn.close()
                conn, failures = None, failures + 1
                continue
            if spec.pace:
                await asyncio.sleep(spec.pace)
    finally:
        if conn is not None:
            await conn.close(quit_first=True)


async def _connect(
    spec: LoadSpec, burst: asyncio.Semaphore, result: LoadResult
) -> Connection | None:
    try:
        return await Connection.open(spec.host, spec.port, burst)
    except (SmtpError, OSError, TimeoutError) as exc:
        result.refused[f"connect:{_short(exc)}"] += 1
        return None


async def _one_message(conn: Connection, spec: LoadSpec, n: int, result: LoadResult) -> None:
    marker = f"bench-{spec.run_id}-{n}"
    recipients = recipients_for(n, spec.recipients)
    payload = build_message(marker, recipients, spec.body_size, spec.charset)
    result.attempted += 1
    sent_at = time.time()
    if not result.first_mail:
        result.first_mail = sent_at
    reply = await conn.send("bench@example.com", recipients, payload, result.refused)
    done_at = result.last_reply = time.time()
    if reply is None:
        return
    code, _ = reply
    if code == 250:
        result.accepted[marker] = Accepted(recipients, sent_at, done_at)
        result.latencies_ms.append((done_at - sent_at) * 1000)
    else:
        count_refusal(result.refused, "DATA-end", code)


def _short(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--recipients", type=int, default=1)
    parser.add_argument("--body-size", type=int, default=1024)
    parser.add_argument("--charset", choices=sorted(CHARSETS), default="utf-8")
    args = parser.parse_args()
    spec = LoadSpec(
        args.host,
        args.port,
        args.messages,
        args.connections,
        args.recipients,
        args.body_size,
        args.charset,
    )
    result = asyncio.run(run_load(spec))
    print(
        f"accepted {len(result.accepted)}/{result.attempted} in {result.wall:.2f}s: "
        f"{result.rate:.0f} msgs/s, p50 {result.p50:.1f} ms, p99 {result.p99:.1f} ms, "
        f"refused {dict(result.refused)}"
    )


if __name__ == "__main__":
    main()
