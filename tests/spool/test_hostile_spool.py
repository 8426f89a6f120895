"""What one client can make the spool cost, and who else the spool's readers hold up.

Issue 11, items 2, 15 and 18, each against a running gateway over a real SMTP socket: a large
message to many recipients is stored once, not once per recipient; `queue list` and the
metrics read beside the writer instead of in its transaction; the spool and its companions are
created for their owner only, and a token file others can read is pointed out.
"""

from __future__ import annotations

import asyncio
import json
import os
import smtplib
import sqlite3
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from gateway.spool.rows import Search
from gateway.spool.sqlite.schema import MIGRATIONS, SCHEMA, _statements
from gateway.spool.sqlite.store import SqliteSpool
from gateway.status import callbacks as tracking
from tests.conftest import TOKEN, Running, base_config, eventually
from tests.fakeplatform import FakePlatform
from tests.test_crash import Daemon, no_daemon_left_behind  # noqa: F401 - its fixture cleans up

StartGateway = Callable[..., Awaitable[Running]]
MB = 1024 * 1024


def spool_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def big_message(subject: str, size: int) -> tuple[bytes, str]:
    """A plain-text mail of about `size` bytes and the sent_text it becomes."""
    line = "The quick brown fox jumps over the lazy dog, again and again and again. 0123456"
    lines = [f"{n:06d} {line}" for n in range(size // (len(line) + 9))]
    raw = (
        f"From: app@corp.test\r\nTo: many@sms.local\r\nSubject: {subject}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n" + "\r\n".join(lines) + "\r\n"
    ).encode()
    return raw, subject + "\n" + "\n".join(lines)


def send(running: Running, raw: bytes, recipients: list[str]) -> tuple[int, bytes]:
    with smtplib.SMTP(running.host, running.port, timeout=60) as client:
        client.ehlo("client.test")
        client.mail("app@corp.test")
        for rcpt in recipients:
            code, text = client.rcpt(rcpt)
            assert code == 250, (code, text)
        return client.data(raw)


# --- item 2: one message, many recipients ----------------------------------------------------


async def test_a_large_message_to_100_recipients_is_stored_once(
    start_gateway: StartGateway, platform: FakePlatform
) -> None:
    gw = await start_gateway(
        {
            "smtp": {"max_message_size": "1MiB", "max_recipients": 100},
            # A busy test machine must not time a 1 MB send out (a resend).
            "api": {"max_concurrency": 16, "timeout": "30s"},
        }
    )
    path = gw.gateway.config.spool.path
    raw, text = big_message("big", 950_000)
    recipients = [f"7900{n:07d}@sms.local" for n in range(100)]
    before = spool_bytes(path)

    code, reply = await asyncio.to_thread(send, gw, raw, recipients)
    assert code == 250, reply
    # Stored: the raw mail and its text, once each; 100 copies would be 95 MB more.
    assert spool_bytes(path) - before < 4 * MB

    received = await platform.wait_for(100, within=60)
    assert sorted(r.form["sent_to"] for r in received) == sorted(r[:11] for r in recipients)
    assert all(r.form["sent_text"] == text for r in received)
    queue_id = reply.rsplit(b" ", 1)[1].decode()
    assert set(await gw.wait_final(queue_id, within=30)) == {"sent"}
    # Recording 100 outcomes rewrites delivery rows, never the text.
    assert spool_bytes(path) - before < 8 * MB


async def test_texts_of_their_own_are_each_delivered_and_bounded(
    start_gateway: StartGateway, platform: FakePlatform
) -> None:
    gw = await start_gateway(
        {
            "smtp": {"max_recipients": 100},  # max_message_size stays 64 KiB
            "domains": {"sms.local": {"text": "{recipient}: {subject}\n{body}"}},
        }
    )
    spool = gw.gateway.spool
    assert isinstance(spool, SqliteSpool)
    raw, text = big_message("each", 2000)
    three = [f"7900000000{n}@sms.local" for n in range(3)]
    code, _reply = await asyncio.to_thread(send, gw, raw, three)
    assert code == 250
    received = await platform.wait_for(3)
    assert sorted(r.form["sent_text"] for r in received) == [
        f"7900000000{n}: {text}" for n in range(3)
    ]

    # 20 texts of 60 KB each are past ten times the 64 KiB size limit: "too large", and
    # nothing is stored.
    raw, _text = big_message("each", 60_000)
    twenty = [f"790000001{n:02d}@sms.local" for n in range(20)]
    count = len(await spool.find_deliveries(Search()))
    code, reply = await asyncio.to_thread(send, gw, raw, twenty)
    assert (code, reply.split(b" ", 1)[0]) == (552, b"5.3.4"), reply
    assert len(await spool.find_deliveries(Search())) == count

    # The same mail with one text for all is a single copy, and taken.
    gw_shared = await start_gateway(
        {"smtp": {"max_recipients": 100}, "spool": {"path": str(Path(f"{spool.path}.2"))}}
    )
    code, reply = await asyncio.to_thread(send, gw_shared, raw, twenty)
    assert code == 250, reply


async def test_a_spool_from_the_previous_version_still_delivers(
    make_config: Callable[..., Any], start_gateway: StartGateway, platform: FakePlatform
) -> None:
    # Schema 2, as the previous release wrote it: every delivery holds its whole request.
    path = make_config().spool.path
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    for statement in _statements(SCHEMA) + _statements(MIGRATIONS[2]):
        old.execute(statement)
    old.execute("PRAGMA user_version=2")
    now = time.time()
    long_text = "Old mail\n" + "queued before the upgrade " * 20
    old.execute(
        "INSERT INTO messages VALUES ('0000000000A000001', ?, 'a@corp.test', '127.0.0.1',"
        " 'h', NULL, 3, x'616263')",
        (now,),
    )
    for number in ("79001110001", "79001110002"):
        old.execute(
            "INSERT INTO deliveries (message_id, recipient, request, state,"
            " next_attempt_at, updated_at) VALUES ('0000000000A000001', ?, ?, 'queued',"
            " ?, ?)",
            (
                f"{number}@sms.local",
                json.dumps(
                    {"type": "sms", "sent_to": number, "sender": "MyShop", "sent_text": long_text}
                ),
                now,
                now,
            ),
        )
    old.close()

    gw = await start_gateway()
    received = await platform.wait_for(2)
    assert sorted(r.form["sent_to"] for r in received) == ["79001110001", "79001110002"]
    assert all(r.form["sent_text"] == long_text for r in received)
    # New mail beside the old in the upgraded spool.
    raw, text = big_message("new", 3000)
    code, _reply = await asyncio.to_thread(send, gw, raw, ["79001110003@sms.local"])
    assert code == 250
    assert (await platform.wait_for(3))[2].form["sent_text"] == text


# --- item 15: readers beside the writer ------------------------------------------------------


def fill(path: Path, messages: int, per_message: int) -> None:
    """Finished history, written straight into the spool in one transaction."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    start = time.time() - 3 * 86400
    ids = [f"{int((start + n) * 1000):011X}{n:06X}" for n in range(messages)]
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO messages (id, received_at, mail_from, peer, helo, size, raw)"
        " VALUES (?, ?, 'old@corp.test', '127.0.0.1', 'h', 3, x'616263')",
        ((queue_id, start + n) for n, queue_id in enumerate(ids)),
    )
    conn.executemany(
        "INSERT INTO deliveries (message_id, recipient, request, state, attempts,"
        " next_attempt_at, updated_at) VALUES (?, ?, '{\"sent_to\": \"7\"}', 'sent', 1, ?, ?)",
        (
            (queue_id, f"7901{n:06d}{r}@sms.local", start, start)
            for n, queue_id in enumerate(ids)
            for r in range(per_message)
        ),
    )
    conn.execute("COMMIT")
    conn.close()


async def test_queue_list_and_metrics_on_a_big_spool_do_not_hold_up_accepts(
    start_gateway: StartGateway, platform: FakePlatform
) -> None:
    gw = await start_gateway()
    spool = gw.gateway.spool
    assert isinstance(spool, SqliteSpool)
    await asyncio.to_thread(fill, spool.path, 20_000, 10)  # 200,000 deliveries

    readings: list[tuple[float, float]] = []
    accepted: list[tuple[float, float]] = []  # (when answered, how long it took)
    done = threading.Event()

    def accepts() -> None:
        with smtplib.SMTP(gw.host, gw.port, timeout=30) as client:
            client.ehlo("client.test")
            for n in range(400):
                if done.is_set() and n >= 40:
                    return
                started = time.monotonic()
                client.sendmail(
                    "app@corp.test",
                    ["79005550000@sms.local"],
                    f"Subject: beside {n}\r\n\r\nbody\r\n".encode(),
                )
                accepted.append((time.monotonic(), time.monotonic() - started))

    async def read_all_the_time() -> None:
        for _ in range(4):
            started = time.monotonic()
            listed = await spool.find_deliveries(Search(limit=200_000))
            readings.append((started, time.monotonic()))
            started = time.monotonic()
            stats = await tracking.spool_stats(spool)
            readings.append((started, time.monotonic()))
            assert len(listed) >= 20_000 // 10 and stats.by_state["sent"] >= 200_000
        done.set()

    sender = asyncio.create_task(asyncio.to_thread(accepts))
    await read_all_the_time()
    await sender

    # Every accept answered promptly while whole listings of the spool ran...
    assert max(took for _, took in accepted) < 2.0
    # ... and answered *during* them: on the writer's thread a listing holds every commit.
    during = [
        at for at, _ in accepted if any(start + 0.05 < at < end - 0.05 for start, end in readings)
    ]
    assert during, (readings, accepted[:5])


# --- item 18: file modes and a readable token file -------------------------------------------


async def test_spool_files_are_private_and_a_readable_token_file_is_named(
    tmp_path: Path, platform: FakePlatform
) -> None:
    spool = tmp_path / "spool.sqlite3"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    config = base_config(spool, platform.base_url)
    del config["api"]["token"]
    config["api"]["token_file"] = str(token_file)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))

    daemon = Daemon(config_path)
    old_umask = os.umask(0o022)  # what a shell gives outside systemd
    try:
        port = await daemon.start()
    finally:
        os.umask(old_umask)

    def one() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail(
                "app@corp.test", ["79001234567@sms.local"], b"Subject: modes\r\n\r\nbody\r\n"
            )

    await asyncio.to_thread(one)
    await platform.wait_for(1)
    assert platform.requests[0].form["token"] == TOKEN

    for name in ("spool.sqlite3", "spool.sqlite3-wal", "spool.sqlite3-shm", "spool.sqlite3.lock"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o600, f"{name}: {mode:04o}"
    warning = [line for line in daemon.log if "api.token_file" in line]
    assert warning and str(token_file) in warning[0] and "0644" in warning[0], daemon.log
    assert TOKEN not in "\n".join(daemon.log)
    assert await daemon.terminate() == 0


async def test_an_existing_readable_spool_keeps_its_mode_and_is_named(
    tmp_path: Path, platform: FakePlatform
) -> None:
    spool = tmp_path / "spool.sqlite3"
    spool.touch()
    spool.chmod(0o640)  # perhaps meant for a group of operators: not changed behind them
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(base_config(spool, platform.base_url)))
    daemon = Daemon(config_path)
    await daemon.start()
    assert stat.S_IMODE(spool.stat().st_mode) == 0o640
    await eventually(lambda: any(str(spool) in line and "0640" in line for line in daemon.log))
    assert not any("token_file" in line for line in daemon.log)
    # Its signal handlers are in place once it says it is ready.
    await eventually(lambda: any("smtp2pulse ready" in line for line in daemon.log))
    assert await daemon.terminate() == 0
