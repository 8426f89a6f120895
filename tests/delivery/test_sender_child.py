"""The sender process's child end to end: a real child over a real socket pair, as the daemon
starts it (sender_process.SenderProcess), spoken to in child_protocol's messages."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.config.loader import parse_config
from gateway.delivery import child_protocol as wire


def _api(tmp_path: Any) -> Any:
    data = {
        "api": {"token": "t" * 20, "dry_run": True},
        "spool": {"path": str(tmp_path / "spool.sqlite3")},
        "domains": {"sms.local": {"type": "sms"}},
    }
    return parse_config(data, env={}).api


@contextlib.asynccontextmanager
async def ready_child(
    tmp_path: Any, module: str = "gateway.delivery.sender_child"
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.subprocess.Process]]:
    """A real sender child over a socket pair, started and Ready; killed if a test leaves it."""
    ours, theirs = socket.socketpair()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        str(theirs.fileno()),
        pass_fds=(theirs.fileno(),),
        stdin=asyncio.subprocess.DEVNULL,
    )
    theirs.close()
    reader, writer = await asyncio.open_connection(sock=ours)
    try:
        writer.write(wire.frame(wire.Start(_api(tmp_path), "warning", "plain", False)))
        assert isinstance(await asyncio.wait_for(wire.read(reader), 30), wire.Ready)
        yield reader, writer, child
    finally:
        writer.close()
        if child.returncode is None:
            child.kill()
            await child.wait()


# sender_process: the module the child was started as before it had its own, which a daemon
# still running that code asks for after an upgrade under it.
@pytest.mark.parametrize(
    "module", ["gateway.delivery.sender_child", "gateway.delivery.sender_process"]
)
async def test_the_child_starts_answers_each_send_and_stops_when_told(
    tmp_path: Any, module: str
) -> None:
    async with ready_child(tmp_path, module) as (reader, writer, child):
        request = {"sent_to": "79001234567", "sent_text": "hello"}
        writer.write(wire.frame(wire.Send(7, (request,), "token", batch=False)))
        writer.write(wire.frame(wire.Send(8, (request, request), "token", batch=True)))
        answers = {}
        for _ in range(2):
            answer = await asyncio.wait_for(wire.read(reader), 30)
            assert isinstance(answer, wire.Answer)
            answers[answer.number] = [(o.kind, o.platform_id) for o in answer.outcomes]
        assert answers == {7: [("sent", "dry-run")], 8: [("sent", "dry-run")] * 2}
        writer.write(wire.frame(wire.Stop()))
        assert await asyncio.wait_for(child.wait(), 30) == 0
