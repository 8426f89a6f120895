"""Issue 29 item 5: smtp.timeout is for a silent client, never for a gateway still storing.

On a PostgreSQL spool whose tables are locked for longer than smtp.timeout, a client that has
sent its final dot waits for the commit and hears 250 (the message then delivered once); before
the fix it heard `421 4.4.2 Timeout` at smtp.timeout and the message was delivered anyway.
"""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import asyncpg

from gateway.app import Gateway
from gateway.config.loader import parse_config
from tests.conftest import Running, base_config, eventually, text_message
from tests.fakeplatform import FakePlatform

TIMEOUT = 1.0
LOCKED_FOR = 3.0


async def pg_gateway(tmp_path: Path, platform: FakePlatform, url: str) -> Gateway:
    data = base_config(tmp_path / "unused.sqlite3", platform.base_url)
    del data["spool"]["path"]
    data["spool"]["url"] = url
    data["smtp"]["timeout"] = f"{TIMEOUT}s"
    gateway = Gateway(parse_config(data, env={}))
    await gateway.start()
    return gateway


def send(gw: Running, marker: str) -> tuple[int, bytes]:
    with smtplib.SMTP(gw.host, gw.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("app@corp.test")
        client.rcpt("79001234567@sms.local")
        return client.data(text_message("held", marker).as_bytes())


async def test_a_commit_held_past_the_timeout_is_answered_250_and_delivered_once(
    tmp_path: Path, platform: FakePlatform, pg_url: str
) -> None:
    gateway = await pg_gateway(tmp_path, platform, pg_url)
    locker = await asyncpg.connect(pg_url)
    try:
        gw = Running(gateway)
        assert (await asyncio.to_thread(send, gw, "before"))[0] == 250  # the path works
        await platform.wait_for(1)
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE messages, deliveries, events IN ACCESS EXCLUSIVE MODE")
        sends = [asyncio.create_task(asyncio.to_thread(send, gw, f"held-{n}")) for n in range(3)]
        await asyncio.sleep(LOCKED_FOR)  # three times smtp.timeout
        assert not any(task.done() for task in sends), [t.result() for t in sends if t.done()]
        await transaction.rollback()
        results = await asyncio.gather(*sends)
        assert [code for code, _ in results] == [250, 250, 250], results
        await eventually(lambda: len(platform.messages) == 4)
        await asyncio.sleep(0.5)  # nothing more comes
        texts = sorted(m["sent_text"].split("\n")[-1] for m in platform.messages)
        assert texts == ["before", "held-0", "held-1", "held-2"], texts
    finally:
        await locker.close()
        await gateway.stop()


async def test_a_silent_client_still_times_out(
    tmp_path: Path, platform: FakePlatform, pg_url: str
) -> None:
    gateway = await pg_gateway(tmp_path, platform, pg_url)
    try:
        gw = Running(gateway)

        def silent_after_data() -> bytes:
            with smtplib.SMTP(gw.host, gw.port, timeout=30) as client:
                client.ehlo("client.test")
                client.mail("app@corp.test")
                client.rcpt("79001234567@sms.local")
                client.putcmd("DATA")
                assert client.getreply()[0] == 354
                client.send(b"Subject: x\r\n\r\nhalf a message")  # and then nothing
                code, text = client.getreply()
                assert code == 421, (code, text)
                return text

        assert b"4.4.2" in await asyncio.wait_for(asyncio.to_thread(silent_after_data), 10)
        assert platform.messages == []
    finally:
        await gateway.stop()
