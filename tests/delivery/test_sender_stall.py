"""A sender child that stalls (SIGSTOP): found out by the parent's pings, said on /healthz,
replaced; and a request that waited past its deadline in a child is never sent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from gateway.config.model import Config
from gateway.delivery import child_protocol as wire
from gateway.delivery.sender_process import SenderProcess
from tests.conftest import Running, eventually, text_message
from tests.delivery.test_sender_child import ready_child
from tests.fakeplatform import FakePlatform
from tests.status.test_status import HTTP, base, get

NUMBERS = [f"7900200{n:04d}@sms.local" for n in range(5)]


@contextlib.asynccontextmanager
async def watching(url: str) -> AsyncIterator[list[tuple[int, str]]]:
    """Every /healthz answer, a few a second, while the block runs."""
    seen: list[tuple[int, str]] = []

    async def poll() -> None:
        while True:
            seen.append(await get(url))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(poll())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_stopped_child_is_replaced_and_nothing_is_sent_twice(
    start_gateway: Callable[..., Awaitable[Running]],
    make_config: Callable[..., Config],
    platform: FakePlatform,
) -> None:
    changes = {**HTTP, "api": {"batch_size": 5}}
    sender = SenderProcess(make_config(changes).api, stuck_after=2.0)
    gw = await start_gateway(changes, sender=sender)
    stalled = sender.pid
    assert stalled is not None
    os.kill(stalled, signal.SIGSTOP)
    try:
        async with watching(base(gw) + "/healthz") as health:
            # The batch goes to the stopped child, which neither reads nor answers it.
            queue_id = await gw.submit(text_message(), NUMBERS)
            await eventually(
                lambda: any(status == 503 and "is stuck" in body for status, body in health),
                within=15,
            )
            await eventually(lambda: sender.pid != stalled and sender.ready(), within=15)
            assert set(await gw.wait_final(queue_id, within=15)) == {"sent"}
            await eventually(lambda: health[-1] == (200, '{"status": "ok"}'))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stalled, signal.SIGCONT)
    await asyncio.sleep(1.0)  # whatever the old child could still have done
    assert sender.restarts >= 1
    assert len(platform.requests) == 1
    assert Counter(m["sent_to"] for m in platform.messages) == Counter(
        n.split("@")[0] for n in NUMBERS
    )


async def test_the_child_does_not_send_past_a_deadline_and_answers_pings(tmp_path: Path) -> None:
    async with ready_child(tmp_path) as (reader, writer, child):
        request = {"sent_to": "79001234567", "sent_text": "hello"}
        now = time.monotonic()
        # A stalled child meets this one only after its deadline: not sent (the dry run's
        # client would say "sent"), a retry for the parent.
        writer.write(
            wire.frame(
                wire.Send(1, (request,), "token", batch=False, start_by=now - 1, answer_by=now + 30)
            )
        )
        writer.write(
            wire.frame(
                wire.Send(
                    2, (request,), "token", batch=False, start_by=now + 30, answer_by=now + 30
                )
            )
        )
        writer.write(wire.frame(wire.Ping()))
        got: dict[int | str, object] = {}
        for _ in range(3):
            message = await asyncio.wait_for(wire.read(reader), 30)
            if isinstance(message, wire.Answer):
                got[message.number] = [(o.kind, o.platform_id) for o in message.outcomes]
            else:
                got[type(message).__name__] = True
        assert got == {1: [("retry", None)], 2: [("sent", "dry-run")], "Pong": True}
        writer.write(wire.frame(wire.Stop()))
        assert await asyncio.wait_for(child.wait(), 30) == 0


class OldSend:
    """A Send as a parent older than the deadlines pickles it (a daemon upgraded under it
    starts the new child): the state of its four fields only."""

    def __init__(self, *state: object) -> None:
        self.state = list(state)

    def __reduce__(self) -> tuple[object, ...]:
        return object.__new__, (wire.Send,), self.state


async def test_a_send_from_an_older_parent_still_goes(tmp_path: Path) -> None:
    async with ready_child(tmp_path) as (reader, writer, child):
        old = OldSend(3, ({"sent_to": "79001234567", "sent_text": "hi"},), "token", False)
        writer.write(wire.frame(old))  # type: ignore[arg-type]
        answer = await asyncio.wait_for(wire.read(reader), 30)
        assert isinstance(answer, wire.Answer)
        assert [o.kind for o in answer.outcomes] == ["sent"]
        writer.write(wire.frame(wire.Stop()))
        assert await asyncio.wait_for(child.wait(), 30) == 0


def test_a_lease_outlasts_the_longest_wait_for_the_sender_process() -> None:
    """A request still allowed to start in the child (START_WITHIN) finishes within api.timeout
    after that, inside the parent's wait; the lease outlasts the parent's wait."""
    from gateway.delivery import sender_process as sp
    from gateway.delivery.worker import LEASE_MARGIN

    assert sp.START_WITHIN < sp.ANSWER_MARGIN
    assert sp.ANSWER_MARGIN + sp.ANSWER_SLACK < LEASE_MARGIN
