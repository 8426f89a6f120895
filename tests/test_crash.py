"""kill -9 in the middle of a stream: every message that got a 250 still reaches the platform."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import smtplib
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from tests.conftest import base_config, eventually, text_message
from tests.fakeplatform import FakePlatform, Reply

LISTENING = re.compile(r"SMTP listening on 127\.0\.0\.1:(\d+)")


class Daemon:
    """`python -m gateway serve` as a real subprocess; its port read from its own log."""

    running: ClassVar[set[Daemon]] = set()

    def __init__(self, config: Path, **env: str) -> None:
        self.config = config
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> int:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "-c",
            str(self.config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        Daemon.running.add(self)
        port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(port))
        return await asyncio.wait_for(port, 30)

    async def _read(self, port: asyncio.Future[int]) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            match = LISTENING.search(line)
            if match and not port.done():
                port.set_result(int(match.group(1)))
        if not port.done():
            port.set_exception(RuntimeError("daemon exited:\n" + "\n".join(self.log)))

    def children(self) -> list[int]:
        """The daemon's child processes (its sender process), from /proc."""
        assert self.process is not None
        return [pid for pid in _all_pids() if _parent_of(pid) == self.process.pid]

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        if self._reader:
            await self._reader

    async def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), 30)
        if self._reader:
            await self._reader
        return code


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # a zombie has stopped; reaping it is its new parent's job


@pytest.fixture(autouse=True)
async def no_daemon_left_behind() -> AsyncIterator[None]:
    yield
    for daemon in list(Daemon.running):
        if daemon.process is not None and daemon.process.returncode is None:
            await daemon.kill()
    Daemon.running.clear()


def send_stream(port: int, prefix: str, accepted: list[str], stop: threading.Event) -> None:
    """Send numbered messages until the server goes away; record the ones answered 250."""
    number = 0
    while not stop.is_set():
        marker = f"{prefix}-{number}"
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                for _ in range(5):  # a few messages per connection, like a real client
                    marker = f"{prefix}-{number}"
                    number += 1
                    client.sendmail(
                        "app@corp.test",
                        ["79001234567@sms.local"],
                        text_message("crash", marker).as_bytes(),
                    )
                    accepted.append(marker)
        except (OSError, smtplib.SMTPException):
            return


@pytest.mark.parametrize(
    ("mode", "batch_size"), [("inline", 1), ("process", 1), ("inline", 20), ("process", 20)]
)
async def test_kill_9_mid_stream_loses_nothing_that_got_250(
    tmp_path: Path, platform: FakePlatform, mode: str, batch_size: int
) -> None:
    platform.default = Reply(delay=0.3)  # a backlog, and sends in flight, when the kill lands
    config = tmp_path / "config.yaml"
    data = base_config(tmp_path / "spool.sqlite3", platform.base_url)
    data["api"]["batch_size"] = batch_size
    config.write_text(yaml.safe_dump(data))

    daemon = Daemon(config, SMTP2PULSE_SENDER=mode)
    port = await daemon.start()
    accepted: list[str] = []
    stop = threading.Event()
    senders = [
        asyncio.create_task(asyncio.to_thread(send_stream, port, f"s{i}", accepted, stop))
        for i in range(3)
    ]

    def mid_batch() -> bool:
        # With batches: a batch on the wire, unanswered, when the kill lands.
        return batch_size == 1 or any(r.batch and not r.answered for r in platform.requests)

    await eventually(lambda: len(accepted) >= 60 and mid_batch(), within=60)
    senders_before = daemon.children()
    assert len(senders_before) == (1 if mode == "process" else 0)
    await daemon.kill()
    stop.set()
    await asyncio.gather(*senders)
    taken = list(accepted)
    delivered_before = len(platform.messages)
    batches_before = sum(r.batch for r in platform.requests)
    # With batches the kill is made to land on one (mid_batch), whose messages the platform
    # already counts: deliveries outstanding are then the point, not the count.
    assert batch_size > 1 or delivered_before < len(taken), (
        "the kill should land with deliveries outstanding"
    )
    # The sender process sees its parent gone and stops by itself: nothing sends twice.
    await eventually(lambda: all(_gone(pid) for pid in senders_before), within=10)

    restarted = Daemon(config, SMTP2PULSE_SENDER=mode)
    await restarted.start()

    def delivered() -> set[str]:
        return {m["sent_text"].split("\n")[1] for m in platform.messages}

    try:
        await eventually(lambda: set(taken) <= delivered(), within=60)
    except TimeoutError:
        raise AssertionError(
            f"never delivered: {sorted(set(taken) - delivered())}\n"
            + "\n".join(restarted.log[-30:])
        ) from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            assert await restarted.terminate() == 0
    bodies = Counter(m["sent_text"].split("\n")[1] for m in platform.messages)
    duplicates = {marker: n for marker, n in bodies.items() if n > 1}
    print(
        f"\ncrash test ({mode}, batch_size {batch_size}): {len(taken)} accepted before kill"
        f" -9, {delivered_before} delivered before it ({batches_before} batches), all"
        f" {len(taken)} delivered after restart, duplicates: {len(duplicates)}"
    )
    assert all(bodies[marker] >= 1 for marker in taken)
    if batch_size > 1:
        assert batches_before > 0, "the kill should land after batches were sent"
    # At-least-once: only what was in flight at the kill (at most api.max_concurrency requests
    # of at most batch_size messages) may be repeated.
    from gateway.config.model import ApiConfig

    assert len(duplicates) <= ApiConfig().max_concurrency * batch_size


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_sigterm_drains_and_exits_0(
    tmp_path: Path, platform: FakePlatform, loop: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path / "spool.sqlite3", platform.base_url)))
    daemon = Daemon(config, SMTP2PULSE_LOOP=loop)
    port = await daemon.start()
    assert any(line.endswith(f"event loop: {loop}") for line in daemon.log)
    await asyncio.to_thread(_send_one, port, "before-term")
    await platform.wait_for(1)
    assert await daemon.terminate() == 0
    assert any("SIGTERM received" in line for line in daemon.log)
    assert any(line.endswith("stopped") for line in daemon.log)


def _send_one(port: int, body: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail(
            "app@corp.test", ["79001234567@sms.local"], text_message("one", body).as_bytes()
        )


async def test_json_log_lines_carry_the_queue_id(tmp_path: Path, platform: FakePlatform) -> None:
    config = tmp_path / "config.yaml"
    data = base_config(tmp_path / "spool.sqlite3", platform.base_url)
    data["log"] = {"format": "json"}
    config.write_text(yaml.safe_dump(data))
    daemon = Daemon(config)
    port = await daemon.start()
    message = text_message("json", "logs")
    message.add_attachment(b"x", maintype="application", subtype="octet-stream", filename="a.bin")
    await asyncio.to_thread(_send_raw, port, message.as_bytes())
    await platform.wait_for(1)
    assert await daemon.terminate() == 0
    entries = [json.loads(line) for line in daemon.log]
    about_message = [
        e
        for e in entries
        if "accepted" in e["message"] or "attempt=" in e["message"] or "attachments" in e["message"]
    ]
    assert len(about_message) == 3
    queue_ids = {e.get("queue_id") for e in about_message}
    assert len(queue_ids) == 1 and None not in queue_ids
    assert all(set(e) >= {"time", "level", "logger", "message"} for e in entries)


def _send_raw(port: int, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("app@corp.test", ["79001234567@sms.local"], raw)


async def test_sighup_reloads_domains_in_the_running_daemon(
    tmp_path: Path, platform: FakePlatform
) -> None:
    config = tmp_path / "config.yaml"
    data = base_config(tmp_path / "spool.sqlite3", platform.base_url)
    config.write_text(yaml.safe_dump(data))
    daemon = Daemon(config)
    port = await daemon.start()
    assert daemon.process is not None

    def rcpt(address: str) -> int:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo()
            client.mail("app@corp.test")
            return client.rcpt(address)[0]

    assert await asyncio.to_thread(rcpt, "79001234567@new.local") == 550
    data["domains"]["new.local"] = {"type": "viber", "sender": "Shop"}
    config.write_text(yaml.safe_dump(data))
    daemon.process.send_signal(signal.SIGHUP)
    await eventually(lambda: any("config reloaded" in line for line in daemon.log))
    assert await asyncio.to_thread(rcpt, "79001234567@new.local") == 250

    config.write_text("domains: [broken")
    daemon.process.send_signal(signal.SIGHUP)
    await eventually(lambda: any("reload refused" in line for line in daemon.log))
    assert await asyncio.to_thread(rcpt, "79001234567@new.local") == 250
    assert await daemon.terminate() == 0


async def test_sigterm_to_every_process_of_the_unit_still_drains(
    tmp_path: Path, platform: FakePlatform
) -> None:
    """systemd's default stop (KillMode=control-group) signals the sender process too: it must
    leave the drain to its parent, so the send in flight still finishes and is recorded."""
    platform.default = Reply(delay=1.0)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path / "spool.sqlite3", platform.base_url)))
    daemon = Daemon(config, SMTP2PULSE_SENDER="process")
    port = await daemon.start()
    [sender] = daemon.children()
    await asyncio.to_thread(_send_one, port, "in-flight")
    await platform.wait_for(1)
    assert daemon.process is not None
    os.kill(sender, signal.SIGTERM)
    assert await daemon.terminate() == 0
    assert _gone(sender)
    assert any("outcome=sent" in line for line in daemon.log), "\n".join(daemon.log)
    assert not any("sender process exited" in line for line in daemon.log)
    assert len(platform.requests) == 1
