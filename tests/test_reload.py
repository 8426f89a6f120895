"""SIGHUP's reload: new domains for new sessions, a broken file keeps the running config."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.app import Gateway
from gateway.config.loader import load_config
from tests.conftest import Running, base_config, merge, text_message
from tests.fakeplatform import FakePlatform


@pytest.fixture
async def from_file(
    tmp_path: Path, platform: FakePlatform
) -> AsyncIterator[tuple[Path, dict[str, Any], Gateway]]:
    """A gateway started from a config file, so that reload() has a file to re-read."""
    path = tmp_path / "config.yaml"
    data = base_config(tmp_path / "spool.sqlite3", platform.base_url)
    path.write_text(yaml.safe_dump(data))
    gateway = Gateway(load_config(path))
    await gateway.start()
    yield path, data, gateway
    await gateway.stop()


async def test_reload_adds_a_domain_and_keeps_open_sessions(
    from_file: tuple[Path, dict[str, Any], Gateway], platform: FakePlatform
) -> None:
    path, data, gateway = from_file
    gw = Running(gateway)
    open_session = await asyncio.to_thread(gw.client)
    path.write_text(
        yaml.safe_dump(
            merge(data, {"domains": {"tg.local": {"type": "telegram", "sender": "Bot"}}})
        )
    )
    assert await gateway.reload(path) is True

    await gw.send(text_message("new"), "79001234567@tg.local")
    [request] = await platform.wait_for(1)
    assert request.form["type"] == "telegram" and request.form["sender"] == "Bot"

    # The session opened before the reload keeps the config it started with.
    code, _ = await asyncio.to_thread(open_session.mail, "a@corp.test")
    code, text = await asyncio.to_thread(open_session.rcpt, "79001234567@tg.local")
    assert (code, text[:6]) == (550, b"5.7.1 ")
    code, _ = await asyncio.to_thread(open_session.rcpt, "79001234567@sms.local")
    assert code == 250
    code, _ = await asyncio.to_thread(open_session.data, text_message("old").as_bytes())
    assert code == 250
    await asyncio.to_thread(open_session.quit)
    await platform.wait_for(2)

    path.write_text("domains: {broken")
    assert await gateway.reload(path) is False
    await gw.send(text_message("still"), "79001234567@tg.local")
    await platform.wait_for(3)


async def test_reload_cannot_move_the_listener(
    from_file: tuple[Path, dict[str, Any], Gateway],
) -> None:
    path, data, gateway = from_file
    port = gateway.smtp.addresses[0][1]
    path.write_text(yaml.safe_dump(merge(data, {"smtp": {"listen": "127.0.0.1:1"}})))
    assert await gateway.reload(path) is True
    assert str(gateway.config.smtp.listen[0]) == "127.0.0.1:0"

    def noop() -> int:
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            return client.noop()[0]

    assert await asyncio.to_thread(noop) == 250


async def test_reload_of_the_callback_secret_signs_and_verifies_with_the_new_one(
    tmp_path: Path, platform: FakePlatform
) -> None:
    from tests.status.test_status import HTTP, get, submit_and_callback_url

    path = tmp_path / "config.yaml"
    data = merge(base_config(tmp_path / "spool.sqlite3", platform.base_url), HTTP)
    path.write_text(yaml.safe_dump(data))
    gateway = Gateway(load_config(path))
    await gateway.start()
    try:
        data["http"]["callback_secret"] = "a-brand-new-secret-0123456789"
        path.write_text(yaml.safe_dump(data))
        assert await gateway.reload(path) is True
        _, url = await submit_and_callback_url(Running(gateway), platform)
        filled = url.replace("{id}", "1").replace("{status}", "delivered")
        assert await get(filled) == (200, '{"result": "recorded"}')
    finally:
        await gateway.stop()


async def test_a_big_aliases_file_is_checked_off_the_loop(
    from_file: tuple[Path, dict[str, Any], Gateway], tmp_path: Path
) -> None:
    """Issue 29 item 12: SMTP answers while a reload checks a large aliases file."""
    from tests.config.test_aliases import anchor_bomb

    path, data, gateway = from_file
    phones = tmp_path / "phones.csv"
    phones.write_text("".join(f"n{n},{79000000000 + n}\n" for n in range(100_000)))
    path.write_text(
        yaml.safe_dump(merge(data, {"domains": {"sms.local": {"aliases_file": str(phones)}}}))
    )
    gw = Running(gateway)
    client = await asyncio.to_thread(gw.client)
    try:
        loop = asyncio.get_running_loop()
        began = loop.time()
        reload = asyncio.create_task(gateway.reload(path))
        waits: list[float] = []
        while not reload.done():
            started = loop.time()
            assert (await asyncio.to_thread(client.noop))[0] == 250
            waits.append(loop.time() - started)
        took = loop.time() - began
        assert reload.result() is True
        assert len(gateway.config.domains["sms.local"].aliases) == 100_000
        # Checking 100,000 rows takes seconds (more on a busy machine); SMTP answered all along,
        # each NOOP in a fraction of that, where a reload on the loop held every one for all.
        assert len(waits) >= 5 and max(waits) < took / 3, (took, waits)
        # Over the bound (an anchor bomb): refused, and the running config stays.
        phones.unlink()
        bomb = tmp_path / "phones.yaml"
        bomb.write_text(anchor_bomb(3000, 1000))
        path.write_text(
            yaml.safe_dump(merge(data, {"domains": {"sms.local": {"aliases_file": str(bomb)}}}))
        )
        assert await gateway.reload(path) is False
        assert len(gateway.config.domains["sms.local"].aliases) == 100_000
    finally:
        await asyncio.to_thread(client.quit)


async def test_a_reload_that_fails_keeps_the_config_and_says_ready(
    tmp_path: Path, platform: FakePlatform
) -> None:
    """A deeply nested aliases file: before, the SIGHUP callback died with a RecursionError
    and systemd never heard READY after RELOADING."""
    import socket

    from gateway.sdnotify import Notifier
    from tests.test_sdnotify import receive

    listening = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listening.bind(str(tmp_path / "notify.sock"))
    listening.setblocking(False)
    path = tmp_path / "config.yaml"
    data = base_config(tmp_path / "spool.sqlite3", platform.base_url)
    path.write_text(yaml.safe_dump(data))
    gateway = Gateway(
        load_config(path), notifier=Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    )
    await gateway.start()
    try:
        assert (await receive(listening)).startswith("READY=1")
        deep = tmp_path / "deep.yaml"
        deep.write_text("duty: " + "[" * 5000 + "]" * 5000 + "\n")
        path.write_text(
            yaml.safe_dump(merge(data, {"domains": {"sms.local": {"aliases_file": str(deep)}}}))
        )
        gateway.on_sighup(path)  # as the signal handler does
        assert (await receive(listening)).startswith("RELOADING=1")
        assert (await receive(listening)).startswith("READY=1\nSTATUS=reload refused")
        assert gateway.config.domains["sms.local"].aliases == {}
        await Running(gateway).send(text_message("still"), "79001234567@sms.local")
    finally:
        await gateway.stop()
        listening.close()
