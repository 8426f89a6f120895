"""Two real gateways (`smtp2pulse serve` processes) on one PostgreSQL spool: load through both,
one killed with SIGKILL and left dead; the survivor delivers everything the dead one answered
250 and takes its callbacks. And the database going away under load: no 250 without a commit."""

from __future__ import annotations

import asyncio
import contextlib
import re
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
import yaml

from tests.conftest import base_config, eventually, text_message
from tests.fakeplatform import FakePlatform, Reply
from tests.pgserver import PgServer
from tests.test_crash import Daemon, no_daemon_left_behind

HTTP_LISTENING = re.compile(r"HTTP status listening on 127\.0\.0\.1:(\d+)")
SECRET = "callback-secret-0123456789abcdef"
STOPS: list[threading.Event] = []
__all__ = ["no_daemon_left_behind"]  # the daemons a failed test leaves are killed


@pytest.fixture(autouse=True)
def no_load_left_running() -> Iterator[None]:
    """A failed assertion must not leave a sending thread behind: pytest would wait for it."""
    yield
    for stop in STOPS:
        stop.set()
    STOPS.clear()


def pg_config(tmp_path: Path, platform: FakePlatform, url: str, batch_size: int = 1) -> Path:
    data: dict[str, Any] = base_config(tmp_path / "unused.sqlite3", platform.base_url)
    data["api"]["batch_size"] = batch_size
    del data["spool"]["path"]
    data["spool"]["url"] = url
    # api.timeout bounds a lease (timeout + 15 s): what a dead gateway's sends wait for.
    data["api"]["timeout"] = "1s"
    data["http"] = {
        "listen": "127.0.0.1:0",
        "public_url": "http://gateway.invalid",
        "callback_secret": SECRET,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def send_stream(
    port: int,
    prefix: str,
    accepted: dict[str, str],
    stop: threading.Event,
    refusals: list[int | str],
) -> None:
    """Numbered messages until `stop` or the server goes away; marker → queue id of each 250."""
    number = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.ehlo()
                for _ in range(5):
                    marker = f"{prefix}-{number}"
                    number += 1
                    client.mail("app@corp.test")
                    code, why = client.rcpt("79001234567@sms.local")
                    if code != 250:
                        refusals.append(f"{code} {why.decode()}")
                        client.rset()
                        continue
                    code, reply = client.data(text_message("pg", marker).as_bytes())
                    if code == 250:
                        accepted[marker] = reply.decode().rsplit(" ", 1)[-1]
                    else:
                        refusals.append(code)
        except (OSError, smtplib.SMTPException) as exc:
            refusals.append(type(exc).__name__)
            if stop.is_set():
                return
            time.sleep(0.1)  # the server went away (killed) or refused: try again until stop


def delivered(platform: FakePlatform) -> Counter[str]:
    return Counter(m["sent_text"].split("\n")[1] for m in platform.messages)


@pytest.mark.parametrize("batch_size", [1, 20])
async def test_the_survivor_delivers_what_a_killed_gateway_accepted(
    tmp_path: Path, platform: FakePlatform, pg_url: str, batch_size: int
) -> None:
    # A backlog and sends in flight when the kill lands (batches carry the backlog away fast:
    # a slower reply keeps them on the wire, under api.timeout).
    platform.default = Reply(delay=0.3 if batch_size == 1 else 0.6)
    config = pg_config(tmp_path, platform, pg_url, batch_size)
    doomed, survivor = Daemon(config), Daemon(config)
    doomed_port, survivor_port = await asyncio.gather(doomed.start(), survivor.start())
    accepted_doomed: dict[str, str] = {}
    accepted_survivor: dict[str, str] = {}
    refusals: list[int | str] = []
    stop_doomed, stop_survivor = threading.Event(), threading.Event()
    STOPS.extend((stop_doomed, stop_survivor))
    loads = [
        asyncio.create_task(
            asyncio.to_thread(send_stream, doomed_port, "a", accepted_doomed, stop_doomed, refusals)
        ),
        asyncio.create_task(
            asyncio.to_thread(
                send_stream, survivor_port, "b", accepted_survivor, stop_survivor, refusals
            )
        ),
    ]
    try:
        await eventually(
            lambda: len(accepted_doomed) >= 40 and len(accepted_survivor) >= 40, within=60
        )
    except TimeoutError:
        raise AssertionError(
            f"{len(accepted_doomed)}, {len(accepted_survivor)} accepted, "
            f"refused {Counter(refusals)}\n" + "\n".join(doomed.log[-20:])
        ) from None

    await doomed.kill()
    killed_at = time.monotonic()
    stop_doomed.set()
    await asyncio.sleep(1.0)  # the survivor goes on taking mail meanwhile
    stop_survivor.set()
    await asyncio.gather(*loads)
    taken = {**accepted_doomed, **accepted_survivor}
    # (A message sent but whose 250 the kill cut off may be delivered too, and is not in taken.)
    assert set(taken) - set(delivered(platform)), "the kill should leave deliveries behind"

    try:
        await eventually(lambda: set(taken) <= set(delivered(platform)), within=90)
    except TimeoutError:
        missing = sorted(set(taken) - set(delivered(platform)))
        raise AssertionError(
            f"never delivered: {missing}\n" + "\n".join(survivor.log[-20:])
        ) from None
    took_over = time.monotonic() - killed_at
    counts = delivered(platform)
    duplicates = {marker: n for marker, n in counts.items() if n > 1}
    print(
        f"\ntwo gateways, batch_size {batch_size}: {len(accepted_doomed)} accepted by the"
        " killed one, "
        f"{len(accepted_survivor)} by the survivor, all delivered {took_over:.1f} s after "
        f"the kill; duplicates {len(duplicates)}"
    )
    # At least once: only what the dead gateway had in flight (max_concurrency requests of at
    # most batch_size) may repeat.
    assert len(duplicates) <= 8 * batch_size
    if batch_size > 1:
        assert any(r.batch for r in platform.requests)

    # A callback for a message of the dead gateway, sent to the survivor, updates the status.
    marker, queue_id = next(iter(accepted_doomed.items()))
    request = next(m for m in platform.messages if m["sent_text"].endswith(marker))
    callback = urlsplit(request["callback"])
    http_port = next(int(m.group(1)) for line in survivor.log if (m := HTTP_LISTENING.search(line)))
    query = callback.query.replace("{id}", "p-1").replace("{status}", "delivered")
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{http_port}{callback.path}?{query}") as reply,
    ):
        assert reply.status == 200, await reply.text()
    conn = await asyncpg.connect(pg_url)
    try:
        status = await conn.fetchval(
            "SELECT status FROM deliveries WHERE message_id = $1", queue_id
        )
    finally:
        await conn.close()
    assert status == "delivered"
    assert await survivor.terminate() == 0


async def test_the_database_going_away_under_load_loses_nothing(
    tmp_path: Path, platform: FakePlatform, pg_url: str, pg_server: PgServer
) -> None:
    config = pg_config(tmp_path, platform, pg_url)
    daemon = Daemon(config)
    port = await daemon.start()
    accepted: dict[str, str] = {}
    refusals: list[int | str] = []
    stop = threading.Event()
    STOPS.append(stop)
    load = asyncio.create_task(asyncio.to_thread(send_stream, port, "c", accepted, stop, refusals))
    await eventually(lambda: len(accepted) >= 30, within=60)
    pg_server.stop("immediate")
    try:
        try:
            await eventually(lambda: 451 in refusals, within=30)
        except TimeoutError:
            raise AssertionError(
                f"{len(accepted)} accepted, refused {Counter(refusals)}\n"
                + "\n".join(daemon.log[-20:])
            ) from None
        during = len(accepted)
        await asyncio.sleep(1.0)
        # Nothing is answered 250 while the database is away.
        assert len(accepted) == during
    finally:
        pg_server.start()
    await eventually(lambda: len(accepted) >= during + 30, within=60)
    stop.set()
    await load
    try:
        await eventually(lambda: set(accepted) <= set(delivered(platform)), within=60)
    except TimeoutError:
        missing = sorted(set(accepted) - set(delivered(platform)))
        raise AssertionError(
            f"never delivered: {missing}\n" + "\n".join(daemon.log[-20:])
        ) from None
    print(
        f"\ndatabase restart under load: {len(accepted)} accepted, "
        f"{refusals.count(451)} answered 451 while it was away, all delivered"
    )
    assert await daemon.terminate() == 0


async def test_one_clients_nul_byte_fails_none_of_the_messages_committed_beside_it(
    tmp_path: Path, platform: FakePlatform, pg_url: str
) -> None:
    # Issue 29 item 10: `EHLO a\x00b` beside normal traffic gave 451 to that client and to 18
    # of 180 other messages of its group commit. Now only that client is refused, for good.
    from gateway.app import Gateway
    from gateway.config.loader import parse_config

    data: dict[str, Any] = base_config(tmp_path / "unused.sqlite3", platform.base_url)
    del data["spool"]["path"]
    data["spool"]["url"] = pg_url
    gateway = Gateway(parse_config(data, env={}))
    await gateway.start()
    host, port = gateway.smtp.addresses[0]
    codes: dict[str, list[int]] = {"clean": [], "nul": []}

    def client(helo: str, kind: str, number: int) -> None:
        with smtplib.SMTP(host, port, timeout=30) as smtp:
            smtp.ehlo(helo)
            for n in range(9):
                smtp.mail("app@corp.test")
                smtp.rcpt("79001234567@sms.local")
                code, _ = smtp.data(text_message("nul", f"{kind}-{number}-{n}").as_bytes())
                codes[kind].append(code)

    loop = asyncio.get_running_loop()
    try:
        with ThreadPoolExecutor(max_workers=19) as pool:
            await asyncio.gather(
                *(loop.run_in_executor(pool, client, "client.test", "clean", i) for i in range(16)),
                *(loop.run_in_executor(pool, client, "a\x00b", "nul", i) for i in range(3)),
            )
        assert codes["clean"] == [250] * 144
        assert codes["nul"] == [550] * 27
        await platform.wait_for(144, within=60)
        assert delivered(platform) == Counter(f"clean-{i}-{n}" for i in range(16) for n in range(9))
    finally:
        await gateway.stop()


MARK = "cut-here-7f3a"  # in the subject of the message whose commit is cut


class CommitCutter:
    """A TCP proxy in front of PostgreSQL that, once armed, passes the COMMIT of the next message
    stored on and then cuts that connection before the server's answer comes back: the commit
    happened, the gateway never hears so."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 5432
        self.url = upstream
        self.armed = False
        self.inserting = False
        self.cuts = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        parts = urlsplit(self.url)
        self.url = parts._replace(
            netloc=parts.netloc.replace(f"{self.host}:{self.port}", f"127.0.0.1:{port}")
        ).geturl()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        cut = asyncio.Event()

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, watch: bool
        ) -> None:
            while chunk := await source.read(65536):
                if cut.is_set():
                    return
                sink.write(chunk)
                await sink.drain()
                if watch and self.armed and MARK.encode() in chunk:
                    self.inserting = True  # the COMMIT to cut is this one's
                if watch and self.inserting and b"COMMIT" in chunk:
                    self.armed = self.inserting = False
                    self.cuts += 1
                    cut.set()  # nothing more goes back to the gateway
                    await asyncio.sleep(0.5)  # while the server commits
                    return

        tasks = [
            asyncio.create_task(pump(reader, up_writer, True)),
            asyncio.create_task(pump(up_reader, writer, False)),
        ]
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            w.transport.abort()


async def test_a_commit_whose_answer_is_lost_is_answered_as_stored_when_it_was(
    tmp_path: Path, platform: FakePlatform, pg_url: str
) -> None:
    # Issue 29 item 5: "any internal deadline that answers 4xx must first make sure the message
    # was not committed". The connection is cut after the COMMIT went through: 250, sent once.
    from gateway.app import Gateway
    from gateway.config.loader import parse_config

    cutter = CommitCutter(pg_url)
    await cutter.start()
    data: dict[str, Any] = base_config(tmp_path / "unused.sqlite3", platform.base_url)
    del data["spool"]["path"]
    data["spool"]["url"] = cutter.url
    gateway = Gateway(parse_config(data, env={}))
    await gateway.start()
    host, port = gateway.smtp.addresses[0]

    def send(subject: str) -> tuple[int, bytes]:
        with smtplib.SMTP(host, port, timeout=60) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("app@corp.test")
            smtp.rcpt("79001234567@sms.local")
            return smtp.data(text_message("cut", subject).as_bytes())

    try:
        assert (await asyncio.to_thread(send, "before"))[0] == 250
        cutter.armed = True
        code, reply = await asyncio.to_thread(send, MARK)
        assert cutter.cuts == 1
        assert code == 250, reply
        await platform.wait_for(2, within=30)
        assert delivered(platform) == Counter({"before": 1, MARK: 1})
    finally:
        await gateway.stop()
        await cutter.stop()
