"""The mail data is read in stretches (gateway.smtp.data_reader): the same message, the same
end, the same refusals as aiosmtpd's line-by-line loop, checked against aiosmtpd itself."""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
import time
from collections.abc import AsyncIterator

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.loader import parse_config
from gateway.delivery.worker import MAX_IDLE_SLEEP
from gateway.smtp.admission import Admission
from gateway.smtp.data_reader import TooBig, read_data
from gateway.smtp.server import Sessions
from gateway.smtp.session import GatewaySession
from gateway.status.metrics import Metrics
from tests.conftest import Running, eventually
from tests.fakeplatform import FakePlatform
from tests.spool.statements import run_sql

SIZE_LIMIT = 300
LINE_LIMIT = 1001  # aiosmtpd's default reader limit, as in the reference server below
END = b"\r\n.\r\n"
ENVELOPE = b"EHLO c.test\r\nMAIL FROM:<a@corp.test>\r\nRCPT TO:<79001234567@sms.local>\r\nDATA\r\n"


class Capture:
    """aiosmtpd handler that keeps what aiosmtpd's own DATA loop produced."""

    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.contents.append(envelope.original_content or b"")
        return "250 OK"


@pytest.fixture
async def reference() -> AsyncIterator[tuple[int, Capture]]:
    capture = Capture()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(capture, hostname="ref.test", data_size_limit=SIZE_LIMIT), "127.0.0.1", 0
    )
    yield server.sockets[0].getsockname()[1], capture
    server.close()
    await server.wait_closed()


def reference_read(port: int, capture: Capture, data: bytes) -> bytes | None:
    """What aiosmtpd makes of `data` after DATA: the content, or None for a refusal."""
    before = len(capture.contents)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        sock.sendall(ENVELOPE + data)
        finals: list[bytes] = []
        while len(finals) < 6:  # greeting, EHLO, MAIL, RCPT, 354, after the data
            line = reader.readline()
            assert line, f"connection closed after {finals}"
            if line[3:4] != b"-":
                finals.append(line[:3])
    if finals[-1] == b"250":
        assert len(capture.contents) == before + 1
        return capture.contents[-1]
    assert finals[-1] in (b"552", b"500"), finals  # too much data, or a line too long
    return None


async def stretched_read(data: bytes) -> tuple[bytes | None, bytes]:
    """What read_data makes of the same bytes, and what it leaves for the next command."""
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    reader.feed_data(data)
    reader.feed_eof()
    try:
        content: bytes | None = await read_data(reader, SIZE_LIMIT)
    except TooBig:
        content = None
    return content, await reader.read()


# Pieces that sit on the edges: dots at line starts and ends, bare CR and LF, the end mark
# itself, lines and stretches near the size and line limits.
_PIECES = st.sampled_from(
    [
        b".",
        b"..",
        b"\r\n",
        b"\r",
        b"\n",
        b"x",
        b"text.",
        b" ",
        b"\r\n.",
        b".\r\n",
        b"\n.\n",
        b"\r.\r",
        b"\r\n..\r\n",
        b"\xd0\x96",
        b"a" * 120,
        b"b" * 700,
        b"c.\r\n" * 40,
    ]
)


@pytest.mark.parametrize(
    "data",
    [
        b".\r\n",  # an empty message
        b"..\r\n.\r\n",  # one stuffed line: "."
        b".hidden\r\nline.\r\nlast.\r\n.\r\n",  # a leading dot and lines that end in one
        b"a\n.\nb\r.\rc\n.\r\nd\r\n.\r\n",  # bare LF and CR never end the data
        b"x" * 2000 + b"\r\n.\r\n",  # a line over the reader's limit
        (b"y" * 98 + b"\r\n") * 4 + b".\r\n",  # over the size limit in short lines
        b"z" * 298 + b"\r\n.\r\n",  # exactly the size limit
        b"z" * 299 + b"\r\n.\r\n",  # one byte over
    ],
)
async def test_known_edges_match_aiosmtpd(reference: tuple[int, Capture], data: bytes) -> None:
    port, capture = reference
    expected = await asyncio.to_thread(reference_read, port, capture, data)
    content, rest = await stretched_read(data + b"NOOP\r\n")
    assert content == expected
    assert rest == b"NOOP\r\n"


async def test_generated_data_matches_aiosmtpd(reference: tuple[int, Capture]) -> None:
    port, capture = reference

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(pieces=st.lists(_PIECES, max_size=40))
    def same(pieces: list[bytes]) -> None:
        data = b"".join(pieces) + END + b"NOOP\r\n"
        # The data ends at the first <CRLF>.<CRLF>, the DATA command's own <CRLF> included.
        end = (b"\r\n" + data).find(END) + len(END) - 2
        content, rest = asyncio.run(stretched_read(data))  # this thread's own loop
        assert content == reference_read(port, capture, data)
        assert rest == data[end:]

    await asyncio.to_thread(same)


async def test_end_mark_split_across_writes(gw: Running, platform: FakePlatform) -> None:
    """The end of the data arrives a byte at a time, as a slow link might deliver it."""
    message = b"From: a@corp.test\r\nSubject: slow\r\n\r\nfirst.\r\n..dotted"

    def run() -> list[bytes]:
        with socket.create_connection((gw.host, gw.port), timeout=10) as sock:
            reader = sock.makefile("rb")
            sock.sendall(ENVELOPE + message)
            for byte in END:
                time.sleep(0.02)
                sock.sendall(bytes([byte]))
            sock.sendall(b"QUIT\r\n")
            return [line for line in reader.read().split(b"\r\n") if line[3:4] == b" "]

    finals = await asyncio.to_thread(run)
    assert [line[:9] for line in finals] == [
        b"220 gw.te",
        b"250 HELP",
        b"250 2.1.0",
        b"250 2.1.5",
        b"354 End d",
        b"250 2.0.0",
        b"221 2.0.0",
    ]
    [request] = await platform.wait_for(1)
    assert request.form["sent_text"] == "slow\nfirst.\n.dotted"


async def test_dots_at_line_starts_reach_the_platform_unstuffed(
    gw: Running, platform: FakePlatform
) -> None:
    body = ".starts with a dot\r\n..two dots\r\n.\r\nends with a dot.\r\n"
    raw = f"From: a@corp.test\r\nSubject: dots\r\n\r\n{body}".encode()
    await gw.send(raw, "79001234567@sms.local")  # smtplib stuffs the dots
    [request] = await platform.wait_for(1)
    assert request.form["sent_text"] == (
        "dots\n.starts with a dot\n..two dots\n.\nends with a dot."
    )


async def test_client_hanging_up_mid_data_stores_nothing(
    gw: Running, platform: FakePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    def run() -> None:
        with socket.create_connection((gw.host, gw.port), timeout=10) as sock:
            reader = sock.makefile("rb")
            sock.sendall(ENVELOPE + b"Subject: cut\r\n\r\nhalf a mess")
            while not reader.readline().startswith(b"354"):
                pass
            sock.shutdown(socket.SHUT_WR)
            assert reader.read() == b""  # closed without another word

    await asyncio.to_thread(run)
    await gw.send(b"Subject: whole\r\n\r\nnext client", "79001234567@sms.local")
    [request] = await platform.wait_for(1)
    assert request.form["sent_text"] == "whole\nnext client"
    assert await run_sql(gw.sqlite, "SELECT count(*) FROM messages") == [(1,)]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_client_hanging_up_during_the_commit_has_its_message_sent_at_once(
    gw: Running, platform: FakePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    """The final dot, then the connection dropped while the spool commits: the message is
    stored (its 250 lost, as with any client that hangs up) and sent now, not at the worker's
    next idle look, although the session that would have woken the worker was cancelled."""
    caplog.set_level(logging.INFO, logger="mail.log")
    blocker = sqlite3.connect(gw.sqlite.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the spool's writer waits for this lock

    def run() -> None:
        with socket.create_connection((gw.host, gw.port), timeout=10) as sock:
            reader = sock.makefile("rb")
            sock.sendall(ENVELOPE + b"Subject: dropped\r\n\r\nafter the dot" + END)
            while not reader.readline().startswith(b"354"):
                pass

    try:
        await asyncio.to_thread(run)
        # aiosmtpd cancels the session's handler on EOF: the wait for the commit is gone.
        await eventually(lambda: any("EOF received" in r.getMessage() for r in caplog.records))
    finally:
        blocker.rollback()
        blocker.close()
    [request] = await platform.wait_for(1, within=MAX_IDLE_SLEEP / 2)
    assert request.form["sent_text"] == "dropped\nafter the dot"


async def test_a_reader_limit_below_the_size_limit_keeps_aiosmtpds_loop() -> None:
    """read_data needs the reader's limit at or above the size limit (the gateway sets it so);
    a server without that falls back to aiosmtpd's loop, which takes long text in short lines."""
    capture = Capture()
    loop = asyncio.get_running_loop()
    # The smallest size limit gives the session a reader limit of 1024, below the 5000 here.
    config = parse_config(
        {
            "api": {"token": "t"},
            "domains": {"sms.local": {"type": "sms"}},
            "smtp": {"max_message_size": 1024},
        },
        env={},
    )
    metrics = Metrics()
    server = await loop.create_server(
        lambda: GatewaySession(
            capture,
            Sessions(metrics),
            config,
            admission=Admission(metrics),
            listener=config.smtp.listen[0],
            hostname="x.test",
            data_size_limit=5000,
            loop=loop,
        ),
        "127.0.0.1",
        0,
    )
    try:
        port = server.sockets[0].getsockname()[1]
        data = b"word " * 9 + b"\r\n"  # no ".<CRLF>" in 3000 bytes: one long stretch
        assert (
            await asyncio.to_thread(reference_read, port, capture, data * 60 + b".\r\n")
            == data * 60
        )
    finally:
        server.close()
        await server.wait_closed()
