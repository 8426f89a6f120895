"""sd_notify over a real datagram socket set as NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.config.model import Config
from gateway.sdnotify import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield sock, path
    sock.close()


async def receive(sock: socket.socket, within: float = 5.0) -> str:
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(sock, 4096), within)
    return data.decode()


async def test_ready_watchdog_reload_and_stopping(
    notify_socket: tuple[socket.socket, str], make_config: Callable[..., Config], tmp_path: Path
) -> None:
    sock, path = notify_socket
    config = make_config()
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    gateway = Gateway(config, notifier=notifier)
    await gateway.start()
    try:
        ready = await receive(sock)
        assert ready.startswith("READY=1\nSTATUS=accepting mail for 3 domains")
        assert gateway.smtp.addresses  # READY only once the listeners are bound
        pings = [await receive(sock) for _ in range(3)]  # every 100 ms, from the loop
        assert pings == ["WATCHDOG=1"] * 3
        missing = tmp_path / "missing.yaml"
        assert await gateway.reload(missing) is False
        messages = [await receive(sock) for _ in range(4)]
        assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for m in messages)
        assert any(m.startswith("READY=1\nSTATUS=reload refused") for m in messages)
    finally:
        await gateway.stop()
    seen = []
    while True:
        try:
            seen.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    assert "STOPPING=1\nSTATUS=draining" in seen


def test_abstract_socket_names_and_no_socket() -> None:
    assert Notifier({"NOTIFY_SOCKET": "@sd/notify"}).address == "\0sd/notify"
    quiet = Notifier({})
    assert not quiet.enabled and quiet.watchdog_interval is None
    quiet.notify("READY=1")  # nothing to send to: no error
    other_pid = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_interval is None  # the watchdog is meant for another process
