"""A broken or hostile platform (issue 29, items 3, 6 and 7; issue 31's diagnostics): replies that
cannot be read, connections that are never read, refused connections and 404s. Each against the
running gateway and tests/hostileplatform.py over real sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import Running, base_config, eventually, text_message
from tests.delivery.test_hostile_delivery import event_texts
from tests.hostileplatform import HostilePlatform, closed_port_url
from tests.test_crash import Daemon

Start = Callable[..., Awaitable[Running]]
NUMBERS = [f"7900123450{n}@sms.local" for n in range(5)]
HTTP = {
    "listen": "127.0.0.1:0",
    "public_url": "https://gw.example.com",
    "callback_secret": "callback-secret-0123456789",
}


@pytest.fixture
async def hostile() -> AsyncIterator[HostilePlatform]:
    server = HostilePlatform()
    await server.start()
    yield server
    await server.stop()


def on(hostile: HostilePlatform, **api: object) -> dict[str, object]:
    return {
        "api": {"base_url": hostile.base_url, "timeout": "2s", **api},
        "spool": {"retry": ["50ms"]},
    }


async def states(gw: Running, queue_id: str, want: str, within: float = 15.0) -> list[str]:
    """Until every delivery of the message is in state `want`; their states."""
    found: list[str] = []

    async def all_there() -> bool:
        nonlocal found
        detail = await gw.gateway.spool.show_message(queue_id)
        assert detail is not None
        found = [d.state for d in detail.deliveries]
        return all(state == want for state in found)

    await eventually(all_there, within, every=0.05)
    return found


async def last_errors(gw: Running, queue_id: str) -> list[str]:
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None
    return [d.last_error or "" for d in detail.deliveries]


# --- 3 and 7: a 2xx whose body cannot be read is unknown, never a retry ------------------------

UNREADABLE = ["slow_body", "endless_chunked", "gzip_bomb", "huge", "bad_gzip", "non_utf8"]


@pytest.mark.parametrize("mode", UNREADABLE)
async def test_a_2xx_with_an_unreadable_body_is_unconfirmed_and_sent_once(
    start_gateway: Start, hostile: HostilePlatform, mode: str
) -> None:
    await hostile.switch(mode)
    gw = await start_gateway(on(hostile))
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    assert await states(gw, queue_id, "unconfirmed") == ["unconfirmed"]
    await asyncio.sleep(0.5)  # ten retry periods: nothing goes again on its own
    assert len(hostile.requests) == 1
    [error] = await last_errors(gw, queue_id)
    assert error.startswith("unknown outcome: HTTP 200, reply unreadable"), error


@pytest.mark.parametrize("mode", ["slow_body", "endless_chunked", "gzip_bomb"])
@pytest.mark.parametrize("sender", ["inline", "process"])
async def test_a_batch_whose_2xx_body_cannot_be_read_is_unconfirmed_and_sent_once(
    start_gateway: Start,
    hostile: HostilePlatform,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    sender: str,
) -> None:
    monkeypatch.setenv("SMTP2PULSE_SENDER", sender)
    await hostile.switch(mode)
    gw = await start_gateway(on(hostile, batch_size=10, max_concurrency=1, batch_wait=0))
    queue_id = await gw.submit(text_message(), NUMBERS)
    assert await states(gw, queue_id, "unconfirmed") == ["unconfirmed"] * 5
    await asyncio.sleep(0.5)
    [request] = hostile.requests
    assert request.batch and len(request.messages) == 5


async def test_a_huge_and_an_endless_reply_leave_the_daemons_memory_bounded(
    tmp_path: Path, hostile: HostilePlatform
) -> None:
    """300 MB at full speed and an endless chunked body: the daemon reads 1 MiB of each."""
    hostile.modes = ["huge", "endless_chunked"]
    config = tmp_path / "config.yaml"
    data = base_config(tmp_path / "spool.sqlite3", hostile.base_url)
    data["api"]["timeout"] = "10s"
    config.write_text(yaml.safe_dump(data))
    daemon = Daemon(config, SMTP2PULSE_SENDER="inline")
    port = await daemon.start()
    try:
        import smtplib

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                for number in ("79001234567", "79007654321"):
                    client.sendmail(
                        "app@corp.test", [f"{number}@sms.local"], text_message().as_bytes()
                    )

        await asyncio.to_thread(send)
        await eventually(lambda: len(hostile.requests) == 2, within=20)
        await eventually(
            lambda: (
                any("outcome=unknown" in line for line in daemon.log)
                and sum("outcome=unknown" in line for line in daemon.log) == 2
            ),
            within=20,
        )
        assert daemon.process is not None
        peak = _status_kib(daemon.process.pid, "VmHWM")
    finally:
        assert await daemon.terminate() == 0
    # The daemon's own ~60 MiB, and a MiB or two per reply; read whole, these were 300+ MiB.
    assert peak < 150 * 1024, peak
    assert all("reply over 1024 KiB" in line for line in daemon.log if "outcome=unknown" in line)


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


# --- 6: a timed-out request does not leak its connection ---------------------------------------


def client_sockets(port: int) -> list[int]:
    """The send queues of the TCP sockets on this host connected to 127.0.0.1:`port` (a
    client's side of each connection to the platform), from /proc/net/tcp."""
    queues = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state, queue = fields[2], fields[3], fields[4]
        if remote.endswith(f":{port:04X}") and state != "06":  # 06: TIME_WAIT, no socket
            queues.append(int(queue.split(":")[0], 16))
    return queues


@pytest.mark.parametrize("sender", ["inline", "process"])
async def test_timed_out_requests_to_a_platform_that_never_reads_leave_no_socket(
    start_gateway: Start, hostile: HostilePlatform, monkeypatch: pytest.MonkeyPatch, sender: str
) -> None:
    monkeypatch.setenv("SMTP2PULSE_SENDER", sender)
    hostile.mode = "never_read"
    gw = await start_gateway({**on(hostile, timeout="500ms"), "smtp": {"max_message_size": "4MiB"}})
    # ~3 MB of form: more than the kernel's buffers hold for a peer that reads nothing.
    await gw.submit(text_message(body="Привет, мир! " * 120_000), "79001234567@sms.local")
    await eventually(lambda: hostile.connections >= 2, within=10)
    fds, connections = len(os.listdir("/proc/self/fd")), hostile.connections
    await eventually(lambda: hostile.connections >= 10, within=30)
    await asyncio.sleep(1.0)  # the last one's timeout has passed
    leftover = client_sockets(hostile.port)
    # At most the one attempt in flight now; before, one per attempt, each with MBs queued.
    assert len(leftover) <= 1, leftover
    # The platform holds its side of each connection open, in this process: one fd each.
    grown = len(os.listdir("/proc/self/fd")) - fds
    assert grown <= hostile.connections - connections + 1, (grown, hostile.connections)


# --- issue 31: refused says refused; a 404 is loud ---------------------------------------------


@pytest.mark.parametrize("sender", ["inline", "process"])
async def test_a_refused_connection_is_reported_as_refused(
    start_gateway: Start, monkeypatch: pytest.MonkeyPatch, sender: str
) -> None:
    monkeypatch.setenv("SMTP2PULSE_SENDER", sender)
    gw = await start_gateway({"api": {"base_url": closed_port_url()}, "spool": {"retry": ["1h"]}})
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    [deferred] = await event_texts(gw, queue_id, "deferred", within=10)
    assert "connection refused by 127.0.0.1:" in deferred, deferred
    assert "timeout" not in deferred.lower()


@pytest.mark.parametrize("batch", [False, True])
async def test_a_404_is_warned_about_and_shown_by_healthz_and_the_page(
    start_gateway: Start, hostile: HostilePlatform, caplog: pytest.LogCaptureFixture, batch: bool
) -> None:
    """A single send is retried on schedule; a batch's messages are unknown, as the contract
    says of any undocumented batch reply (never sent again on their own)."""
    from tests.status.test_status import base, get

    caplog.set_level(logging.INFO)
    hostile.mode = "not_found"
    api = {"batch_size": 10, "max_concurrency": 1, "batch_wait": 0} if batch else {}
    gw = await start_gateway(
        {**on(hostile, **api), "http": HTTP, "spool": {"retry": ["300ms", "1h"]}}
    )
    queue_id = await gw.submit(text_message(), NUMBERS if batch else NUMBERS[0])
    if batch:
        await states(gw, queue_id, "unconfirmed")
        await asyncio.sleep(1)  # three retry waits: nothing goes again on its own
        assert len(hostile.requests) == 1
    else:
        await eventually(lambda: len(hostile.requests) == 2, within=10)  # queued, tried again
        await states(gw, queue_id, "queued")
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "HTTP 404" in r.getMessage()
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once a minute at most
    text = warnings[0].getMessage()
    assert hostile.base_url + "/send-" in text and "check api.base_url" in text
    status, health = await get(base(gw) + "/healthz")
    assert status == 200
    report = json.loads(health)
    assert "HTTP 404" in report["platform_error"] and "api.base_url" in report["platform_error"]
    status, page = await get(base(gw) + "/")  # and the page says it at its top
    assert status == 200
    banner = page.find('id="platform-error"')
    assert -1 < banner < page.find("<h1>") and "HTTP 404" in page[banner : page.find("<h1>")]
    # The platform is fixed: the next 2xx clears it.
    hostile.mode = "ok"
    await gw.gateway.spool.retry_message(queue_id)
    gw.gateway.worker.wake()
    await states(gw, queue_id, "sent")
    status, health = await get(base(gw) + "/healthz")
    assert "platform_error" not in json.loads(health)
    status, page = await get(base(gw) + "/")
    assert 'id="platform-error"' not in page


# --- the callback_first mode works (issue 29, item 2 builds on it) -----------------------------


async def test_the_platform_can_call_the_signed_callback_before_it_answers(
    start_gateway: Start, hostile: HostilePlatform
) -> None:
    from tests.status.test_status import base

    await hostile.switch("callback_first")
    hostile.answer_after = 0.3
    gw = await start_gateway({**on(hostile), "http": HTTP})
    hostile.callback_to = base(gw)
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    assert await gw.wait_final(queue_id) == ["sent"]
    [(status, text)] = hostile.callback_results
    assert status == 200 and json.loads(text)["result"] in ("recorded", "ignored"), text
