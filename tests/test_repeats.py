"""Issue 32 items 1 and 2, over real SMTP to a running gateway on both spools: a retransmission
(a client that lost our 250 sends the message again) is answered with the first queue id and
sent once; `repeat_window` sends a storm's text once, keeps the rest suppressed with reason
`repeat`, and sends it again only after a whole window of silence; two gateways on one
PostgreSQL database share both."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.app import Gateway
from gateway.cli import main
from gateway.config.loader import parse_config
from gateway.errors import ConfigError
from gateway.spool.rows import Search
from tests.conftest import Running, base_config, eventually, fresh_database, text_message
from tests.fakeplatform import FakePlatform

TO = "79001234567@sms.local"
ALSO = "79007654321@sms.local"
Start = Callable[..., Awaitable[Running]]


@pytest.fixture(params=["sqlite", "pg"])
async def start(
    request: pytest.FixtureRequest, tmp_path: Path, platform: FakePlatform
) -> AsyncIterator[Start]:
    """Starts gateways on one spool of the parameter's backend (two are two gateways of one
    PostgreSQL database); writes the config to tmp_path/config.yaml for the CLI."""
    spool: dict[str, Any] = {"path": str(tmp_path / "spool.sqlite3")}
    if request.param == "pg":
        spool = {"url": await fresh_database(request.getfixturevalue("pg_server"))}
    started: list[Gateway] = []

    async def start_one(window: str | None = "10m") -> Running:
        data = base_config(tmp_path / "spool.sqlite3", platform.base_url)
        del data["spool"]["path"]
        data["spool"].update(spool)
        data["http"] = {"listen": "127.0.0.1:0", "public_url": "https://gw.example.com"}
        if window is not None:
            data["domains"]["sms.local"]["repeat_window"] = window
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
        gateway = Gateway(parse_config(data, env={}))
        await gateway.start()
        started.append(gateway)
        return Running(gateway)

    yield start_one
    for gateway in reversed(started):
        await gateway.stop()


def crlf(message: EmailMessage) -> bytes:
    return message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def send_and_hang_up(gw: Running, raw: bytes, to: str, sender: str = "app@corp.test") -> None:
    """A client that sends the final dot and drops the connection before reading the reply."""
    with socket.create_connection((gw.host, gw.port), timeout=10) as conn:
        replies = conn.makefile("rb")

        def reply() -> bytes:
            while True:
                line = replies.readline()
                if line[3:4] != b"-":
                    return line

        assert reply().startswith(b"220")
        for command, code in (
            (b"EHLO client.test", b"250"),
            (b"MAIL FROM:<" + sender.encode() + b">", b"250"),
            (b"RCPT TO:<" + to.encode() + b">", b"250"),
            (b"DATA", b"354"),
        ):
            conn.sendall(command + b"\r\n")
            assert reply().startswith(code)
        conn.sendall(raw + (b"" if raw.endswith(b"\r\n") else b"\r\n") + b".\r\n")
    # Closed without a word: the 250, if any, is lost.


async def lines(gw: Running) -> list[Any]:
    return await gw.gateway.spool.find_deliveries(Search(pending_only=False))


def metric(gw: Running, prefix: str) -> list[str]:
    text = gw.gateway.metrics.exposition().decode()
    return [line for line in text.splitlines() if line.startswith(prefix)]


async def queue_list(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> list[str]:
    code = await asyncio.to_thread(main, ["queue", "-c", str(config), "list", *args])
    out = capsys.readouterr().out
    assert code == 0, out
    return out.splitlines()[1:]


async def quiet_for(platform: FakePlatform, count: int, seconds: float = 0.5) -> None:
    """`count` requests arrived, and no more within `seconds` (the worker had every chance)."""
    await platform.wait_for(count)
    await asyncio.sleep(seconds)
    assert len(platform.requests) == count, [r.form for r in platform.requests]


# --- 1. retransmissions ------------------------------------------------------------------------


async def test_a_retransmission_after_a_lost_250_is_answered_with_the_first_queue_id_and_sent_once(
    start: Start, platform: FakePlatform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await start(window=None)
    raw = crlf(text_message("UPS on battery", "since 05:12", Message_ID="<ups-1@corp.test>"))
    await asyncio.to_thread(send_and_hang_up, gw, raw, TO)
    await eventually(lambda: _count(gw, 1))
    [first] = await lines(gw)
    # The client tries again, through a relay that adds its trace field on the way.
    relayed = b"Received: from relay.corp.test by gw.test; Mon, 7 Dec 2026 05:13:00\r\n" + raw
    code, text = await _data(gw, relayed, TO)
    assert (code, text) == (250, f"2.0.0 Ok: queued as {first.queue_id}".encode())
    await quiet_for(platform, 1)
    assert platform.requests[0].form["sent_text"] == "UPS on battery\nsince 05:12"
    assert [line.queue_id for line in await lines(gw)] == [first.queue_id]
    listed = await queue_list(capsys, tmp_path / "config.yaml", "--all")
    assert len(listed) == 1 and first.queue_id in listed[0], listed
    assert metric(gw, "smtp2pulse_retransmissions_total") == [
        "smtp2pulse_retransmissions_total 1.0"
    ]


async def test_without_a_message_id_the_same_mail_is_sent_again(
    start: Start, platform: FakePlatform
) -> None:
    gw = await start(window=None)
    message = text_message("UPS on battery", "since 05:12")
    assert "Message-ID" not in message
    ids = [await gw.submit(message, TO), await gw.submit(message, TO)]
    await quiet_for(platform, 2)
    assert len(set(ids)) == 2


async def test_one_message_id_with_another_text_is_sent_too(
    start: Start, platform: FakePlatform
) -> None:
    gw = await start(window=None)
    ids = [
        await gw.submit(text_message("Door open", "hall", Message_ID="<same@dev>"), TO),
        await gw.submit(text_message("Door open", "garage", Message_ID="<same@dev>"), TO),
    ]
    await quiet_for(platform, 2)
    assert len(set(ids)) == 2
    assert sorted(r.form["sent_text"] for r in platform.requests) == [
        "Door open\ngarage",
        "Door open\nhall",
    ]


async def test_a_partly_new_retransmission_stores_only_its_new_recipient(
    start: Start, platform: FakePlatform
) -> None:
    gw = await start(window=None)
    message = text_message("Fire alarm", "building 2", Message_ID="<fire-7@corp.test>")
    first = await gw.submit(message, TO)
    second = await gw.submit(message, [TO, ALSO])
    assert second != first
    await quiet_for(platform, 2)
    assert sorted(r.form["sent_to"] for r in platform.requests) == ["79001234567", "79007654321"]
    detail = await gw.gateway.spool.show_message(second)
    assert detail is not None and [d.recipient for d in detail.deliveries] == [ALSO]


async def test_concurrent_retransmissions_store_one(start: Start, platform: FakePlatform) -> None:
    gw = await start(window=None)
    raw = crlf(text_message("Breaker tripped", "line 4", Message_ID="<brk@corp.test>"))
    with ThreadPoolExecutor(8) as pool:
        answers = await asyncio.gather(
            *(
                asyncio.get_running_loop().run_in_executor(pool, _data_sync, gw, raw, TO)
                for _ in range(8)
            )
        )
    assert {code for code, _ in answers} == {250}
    assert len({text for _, text in answers}) == 1, answers
    await quiet_for(platform, 1)
    assert len(await lines(gw)) == 1


# --- 2. repeat_window --------------------------------------------------------------------------


async def test_a_storm_from_concurrent_clients_sends_one_and_keeps_the_rest_suppressed(
    start: Start, platform: FakePlatform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await start(window="10m")
    # Each its own Message-ID, as a device in a loop makes them: not retransmissions, repeats.
    messages = [text_message("UPS on battery", "runtime 12 min") for _ in range(24)]
    for number, message in enumerate(messages):
        message["Message-ID"] = f"<storm-{number}@ups.corp.test>"
    with ThreadPoolExecutor(8) as pool:
        answers = await asyncio.gather(
            *(
                asyncio.get_running_loop().run_in_executor(pool, _data_sync, gw, crlf(m), TO)
                for m in messages
            )
        )
    assert {code for code, _ in answers} == {250}
    assert len({text for _, text in answers}) == 24  # each stored, under its own id
    await quiet_for(platform, 1)
    [sent] = [line for line in await lines(gw) if line.state == "sent"]
    listed = await queue_list(capsys, tmp_path / "config.yaml", "--state", "suppressed")
    assert len(listed) == 23, listed
    assert all(f"repeat of {sent.queue_id}" in line for line in listed), listed
    assert metric(gw, "smtp2pulse_suppressed_total") == [
        'smtp2pulse_suppressed_total{domain="sms.local",reason="repeat"} 23.0'
    ]
    # queue show and the status page say why, too.
    suppressed = next(line for line in await lines(gw) if line.state == "suppressed")
    code = await asyncio.to_thread(
        main, ["queue", "-c", str(tmp_path / "config.yaml"), "show", suppressed.queue_id]
    )
    shown = capsys.readouterr().out
    assert code == 0 and f"repeat of {sent.queue_id}" in shown, shown
    assert gw.gateway.status is not None
    host, port = gw.gateway.status.addresses[0]
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{host}:{port}/messages/{suppressed.queue_id}") as response,
    ):
        page = await response.text()
    assert response.status == 200 and f"repeat of {sent.queue_id}" in page


async def test_the_window_restarts_at_every_repeat_and_the_text_goes_again_after_silence(
    start: Start, platform: FakePlatform
) -> None:
    gw = await start(window="10m")
    spool: Any = gw.gateway.spool

    async def at(minutes: float) -> str:
        spool.clock = lambda: time.time() + minutes * 60
        return await gw.submit(text_message("Link down", "wan1"), TO)

    first = await at(0)
    await quiet_for(platform, 1, 0.1)
    await at(9)  # a repeat: suppressed, and the window starts again here
    await at(18)  # 18 minutes after the one sent, 9 after the repeat: still a repeat
    await quiet_for(platform, 1, 0.3)
    await at(28.5)  # a whole window of silence: sent again
    await quiet_for(platform, 2, 0.3)
    suppressed = [line for line in await lines(gw) if line.state == "suppressed"]
    assert len(suppressed) == 2
    assert all(line.last_error.startswith(f"repeat of {first}") for line in suppressed)


async def test_without_repeat_window_the_same_text_is_sent_each_time(
    start: Start, platform: FakePlatform
) -> None:
    gw = await start(window=None)
    for _ in range(3):
        await gw.submit(text_message("Link down", "wan1"), TO)
    await quiet_for(platform, 3)


async def test_preview_says_a_message_would_be_a_retransmission_or_a_repeat(
    start: Start, platform: FakePlatform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await start(window="10m")
    first = await gw.submit(text_message("Link down", "wan1", Message_ID="<l1@corp.test>"), TO)
    await quiet_for(platform, 1, 0.1)

    async def preview(message: EmailMessage) -> list[dict[str, Any]]:
        path = tmp_path / "mail.eml"
        path.write_bytes(crlf(message))
        config = str(tmp_path / "config.yaml")
        arguments = ["preview", "-c", config, "--to", TO, "--from", "app@corp.test", str(path)]
        code = await asyncio.to_thread(main, arguments)
        out = capsys.readouterr().out
        assert code == 0, out
        printed: list[dict[str, Any]] = json.loads(out)
        return printed

    assert await preview(text_message("Link down", "wan1", Message_ID="<l1@corp.test>")) == [
        {"recipient": TO, "retransmission": f"of {first}: answered 250, not stored again"}
    ]
    assert await preview(text_message("Link down", "wan1", Message_ID="<l2@corp.test>")) == [
        {"recipient": TO, "suppressed": f"repeat of {first}: the same text within 10m"}
    ]
    [request] = await preview(text_message("Link up", "wan1", Message_ID="<l3@corp.test>"))
    assert request["form"]["sent_text"] == "Link up\nwan1"


# --- two gateways on one PostgreSQL database ---------------------------------------------------


@pytest.fixture
async def two(tmp_path: Path, platform: FakePlatform, pg_url: str) -> AsyncIterator[list[Running]]:
    gateways = []
    for number in range(2):
        data = base_config(tmp_path / "unused.sqlite3", platform.base_url)
        del data["spool"]["path"]
        data["spool"]["url"] = pg_url
        data["domains"]["sms.local"]["repeat_window"] = "10m"
        gateway = Gateway(parse_config(data, env={}))
        await gateway.start()
        gateways.append(gateway)
        assert number == len(gateways) - 1
    yield [Running(gateway) for gateway in gateways]
    for gateway in gateways:
        await gateway.stop()


async def test_two_gateways_share_the_window_and_the_retransmission_keys(
    two: list[Running], platform: FakePlatform
) -> None:
    storm = [text_message("UPS on battery", "runtime 12 min") for _ in range(16)]
    again = crlf(text_message("Breaker tripped", "line 4", Message_ID="<brk@corp.test>"))
    with ThreadPoolExecutor(8) as pool:
        loop = asyncio.get_running_loop()
        answers = await asyncio.gather(
            *(
                loop.run_in_executor(pool, _data_sync, two[n % 2], crlf(m), TO)
                for n, m in enumerate(storm)
            ),
            *(loop.run_in_executor(pool, _data_sync, two[n % 2], again, TO) for n in range(8)),
        )
    assert {code for code, _ in answers} == {250}
    assert len({text for _, text in answers[16:]}) == 1  # every retransmission: the first id
    await quiet_for(platform, 2)
    assert sorted(r.form["sent_text"] for r in platform.requests) == [
        "Breaker tripped\nline 4",
        "UPS on battery\nruntime 12 min",
    ]
    found = await lines(two[0])
    assert len(found) == 17
    assert sum(line.state == "suppressed" for line in found) == 15


# --- helpers -----------------------------------------------------------------------------------


async def _count(gw: Running, count: int) -> bool:
    return len(await lines(gw)) == count


def _data_sync(gw: Running, raw: bytes, to: str) -> tuple[int, bytes]:
    with gw.client() as client:
        client.mail("app@corp.test")
        client.rcpt(to)
        return client.data(raw)


async def _data(gw: Running, raw: bytes, to: str) -> tuple[int, bytes]:
    return await asyncio.to_thread(_data_sync, gw, raw, to)


@pytest.mark.parametrize("window", ["soon", "0s"])
def test_a_bad_repeat_window_is_a_config_error_naming_its_key(tmp_path: Path, window: str) -> None:
    data = base_config(tmp_path / "spool.sqlite3", "http://127.0.0.1:9")
    data["domains"]["sms.local"]["repeat_window"] = window
    with pytest.raises(ConfigError) as error:
        parse_config(data, env={})
    problems = error.value.problems
    assert any(line.startswith("domains[sms.local].repeat_window: ") for line in problems)


async def test_preview_without_a_spool_says_it_did_not_look(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = base_config(tmp_path / "none" / "spool.sqlite3", "http://127.0.0.1:9")
    data["domains"]["sms.local"]["repeat_window"] = "10m"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    mail = tmp_path / "mail.eml"
    mail.write_bytes(crlf(text_message("Link down", "wan1", Message_ID="<l1@corp.test>")))
    code = await asyncio.to_thread(
        main, ["preview", "-c", str(config), "--to", TO, "--from", "app@corp.test", str(mail)]
    )
    out, err = capsys.readouterr()
    assert code == 0
    assert err.strip() == (
        "retransmissions and repeats not checked:"
        f" no spool at {tmp_path / 'none' / 'spool.sqlite3'} yet"
    )
    [request] = json.loads(out)
    assert request["form"]["sent_text"] == "Link down\nwan1"
    assert not (tmp_path / "none").exists()  # preview made no spool
