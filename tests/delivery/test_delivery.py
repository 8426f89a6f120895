"""What the gateway does with each kind of platform reply, over real HTTP."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest

from gateway.config.model import Config
from gateway.spool.rows import MessageDetail
from tests.conftest import TOKEN, Running, eventually, text_message
from tests.fakeplatform import FakePlatform, Reply


async def history(gw: Running, queue_id: str) -> MessageDetail:
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None
    return detail


async def test_success_stores_the_platform_id(gw: Running, platform: FakePlatform) -> None:
    platform.script = [Reply(body='{"type": "success", "id": "abc-77"}')]
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    assert await gw.wait_final(queue_id) == ["sent"]
    [delivery] = (await history(gw, queue_id)).deliveries
    assert delivery.platform_id == "abc-77"
    assert delivery.attempts == 1
    assert [kind for _, kind, _ in delivery.events] == ["received", "sent"]


async def test_platform_error_is_a_permanent_refusal(gw: Running, platform: FakePlatform) -> None:
    platform.script = [Reply(body='{"type": "error", "msg": "Недостаточно средств"}')]
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    assert await gw.wait_final(queue_id) == ["refused"]
    [delivery] = (await history(gw, queue_id)).deliveries
    assert delivery.last_error == "Недостаточно средств"
    assert len(platform.requests) == 1  # never retried


async def test_5xx_timeout_garbage_and_429_are_retried_until_success(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway({"api": {"timeout": "300ms"}})
    platform.script = [
        Reply(status=502, body="<html>Bad Gateway</html>"),
        Reply(delay=1.0),  # longer than api.timeout
        Reply(body="<html>maintenance</html>"),  # 200 but not the documented JSON
        Reply(body='{"type": "success"}'),  # success without an id: unknown
        Reply(status=429, body="slow down", headers={"Retry-After": "0"}),
        Reply(body='{"type": "success", "id": "42"}'),
    ]
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    assert await gw.wait_final(queue_id) == ["sent"]
    [delivery] = (await history(gw, queue_id)).deliveries
    assert delivery.platform_id == "42"
    assert delivery.attempts == 6
    kinds = [kind for _, kind, _ in delivery.events]
    assert kinds == ["received"] + ["deferred"] * 5 + ["sent"]
    details = [detail for _, kind, detail in delivery.events if kind == "deferred"]
    assert details[0].startswith("HTTP 502")
    assert details[1].startswith("timeout")
    assert "unrecognised reply" in details[2]
    assert details[4].startswith("HTTP 429")
    forms = [r.form for r in platform.requests]
    assert len(forms) == 6 and all(f == forms[0] for f in forms)  # the same request each time


async def test_retry_after_is_honoured(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway()
    platform.script = [Reply(status=429, headers={"Retry-After": "3600"})]
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    await platform.wait_for(1)
    detail = await history(gw, queue_id)

    async def attempted() -> bool:
        nonlocal detail
        detail = await history(gw, queue_id)
        return detail.deliveries[0].attempts > 0

    await eventually(attempted)
    [delivery] = detail.deliveries
    assert delivery.state == "queued"
    assert delivery.next_attempt_at - detail.received_at > 3500  # not the 50 ms schedule


async def test_gives_up_after_give_up_after(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway({"spool": {"give_up_after": "300ms"}})
    platform.default = Reply(status=503, body="down")
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    assert await gw.wait_final(queue_id) == ["failed"]
    [delivery] = (await history(gw, queue_id)).deliveries
    assert delivery.attempts >= 2
    assert delivery.last_error is not None and delivery.last_error.startswith("gave up after")


async def test_platform_down_then_back(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway()
    port = platform.port
    await platform.stop()  # connection refused from now on
    queue_id = await gw.submit(text_message("while down"), "79001234567@sms.local")
    detail = await history(gw, queue_id)

    async def tried_twice() -> bool:
        nonlocal detail
        detail = await history(gw, queue_id)
        return detail.deliveries[0].attempts >= 2

    await eventually(tried_twice, every=0.02)
    assert detail.deliveries[0].state in ("queued", "sending")
    platform.port = port
    await platform.restart_on(port)
    assert await gw.wait_final(queue_id) == ["sent"]
    assert platform.requests[-1].form["sent_text"] == "while down\nWorld"


@pytest.mark.parametrize("mode", ["inline", "process"])
async def test_dry_run_sends_nothing_and_records_sent(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("SMTP2PULSE_SENDER", mode)
    gw = await start_gateway({"api": {"dry_run": True}})
    queue_id = await gw.submit(text_message("dry"), "79001234567@sms.local")
    assert await gw.wait_final(queue_id) == ["sent"]
    assert platform.requests == []
    await gw.gateway.stop()
    # The sender process logs to the stderr it inherited; inline, the daemon's loggers do.
    logged = capfd.readouterr().err + "\n".join(r.getMessage() for r in caplog.records)
    assert "would POST" in logged and '"sent_text": "dry\\nWorld"' in logged
    assert TOKEN not in logged


@pytest.mark.parametrize("mode", ["inline", "process"])
async def test_token_never_appears_in_any_log_line(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    monkeypatch.setenv("SMTP2PULSE_SENDER", mode)
    caplog.set_level(logging.DEBUG)  # every logger, httpx and aiosmtpd included
    # A sender process logs to the stderr it inherited, at the configured level.
    gw = await start_gateway({"api": {"timeout": "300ms"}, "log": {"level": "debug"}})
    platform.script = [
        Reply(status=500, body=f"echo {TOKEN}"),
        Reply(body=f"echo {TOKEN}"),
        Reply(delay=1.0),
        Reply(body='{"type": "error", "msg": "bad token"}'),
    ]
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    assert await gw.wait_final(queue_id) == ["refused"]
    await gw.gateway.stop()
    assert len(platform.requests) == 4
    assert all(r.form["token"] == TOKEN for r in platform.requests)
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    logged += capfd.readouterr().err
    # The sender's own lines (its plain-http warning) are in what was read, in either mode.
    assert "outcome=refused" in logged and "is plain http" in logged
    assert TOKEN not in logged


async def test_concurrency_cap_is_held_under_load(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway({"api": {"max_concurrency": 3}})
    platform.default = Reply(delay=0.2)
    for n in range(4):
        await gw.send(text_message(f"m{n}"), [f"7900123456{i}@sms.local" for i in range(3)])
    await platform.wait_for(12)
    assert platform.max_inflight == 3


async def test_rate_cap_spaces_the_requests(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway(
        {"api": {"max_rate": 20, "max_concurrency": 8}, "smtp": {"max_recipients": 20}}
    )
    await gw.send(text_message(), [f"790012345{i:02d}@sms.local" for i in range(15)])
    requests = await platform.wait_for(15)
    arrivals = sorted(r.at for r in requests)
    # Lower bounds only: however slow the machine, k+1 requests never span less than k/rate;
    # one slot of slack absorbs a request that the loop sent a little late.
    for i in range(len(arrivals)):
        for j in range(i + 4, len(arrivals)):
            assert arrivals[j] - arrivals[i] >= (j - i - 1) / 20
    assert arrivals[-1] - arrivals[0] >= 13 / 20


async def test_a_dead_sender_process_costs_a_retry_not_the_message(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os
    import signal

    from gateway.delivery.sender_process import SenderProcess

    monkeypatch.setenv("SMTP2PULSE_SENDER", "process")
    gw = await start_gateway()
    sender = gw.gateway.sender
    assert isinstance(sender, SenderProcess) and sender.pid is not None
    first_pid = sender.pid
    platform.script = [Reply(delay=2.0)]  # the first request hangs until the kill
    queue_id = await gw.submit(text_message("survivor"), "79001234567@sms.local")
    await platform.wait_for(1)
    os.kill(first_pid, signal.SIGKILL)
    assert await gw.wait_final(queue_id) == ["sent"]
    assert sender.restarts == 1 and sender.pid != first_pid and sender.running
    detail = await history(gw, queue_id)
    assert detail.deliveries[0].attempts == 2
    assert platform.requests[-1].form["sent_text"] == "survivor\nWorld"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "sender process exited (code -9)" in logged


async def test_the_sender_process_runs_below_the_smtp_side(
    start_gateway: Callable[..., Awaitable[Running]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from gateway.delivery.sender_child import SENDER_NICENESS
    from gateway.delivery.sender_process import SenderProcess

    monkeypatch.setenv("SMTP2PULSE_SENDER", "process")
    sender = (await start_gateway()).gateway.sender
    assert isinstance(sender, SenderProcess) and sender.pid is not None
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, sender.pid) == min(19, ours + SENDER_NICENESS)


@pytest.mark.parametrize(
    ("mode", "kind"),
    [(None, "PulseClient"), ("inline", "PulseClient"), ("process", "SenderProcess")],
)
async def test_each_sender_mode_delivers(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    monkeypatch: pytest.MonkeyPatch,
    mode: str | None,
    kind: str,
) -> None:
    if mode is None:
        monkeypatch.delenv("SMTP2PULSE_SENDER", raising=False)  # the default: in the daemon
    else:
        monkeypatch.setenv("SMTP2PULSE_SENDER", mode)
    gw = await start_gateway()
    assert type(gw.gateway.sender).__name__ == kind
    queue_id = await gw.submit(text_message(f"via {mode}"), "79001234567@sms.local")
    assert await gw.wait_final(queue_id) == ["sent"]
    assert platform.requests[-1].form["sent_text"] == f"via {mode}\nWorld"


def test_an_unknown_sender_mode_is_a_config_error(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.app import Gateway
    from gateway.errors import ConfigError

    monkeypatch.setenv("SMTP2PULSE_SENDER", "threads")
    with pytest.raises(ConfigError, match="SMTP2PULSE_SENDER"):
        Gateway(make_config())
