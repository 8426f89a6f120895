"""`queue list` and `queue show` as an operator uses them beside the running daemon: finding a
message by its recipient in either form, readable history, and clear words for a spool that is
missing or locked."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.smtp.passwords import hash_password
from tests.conftest import Running, base_config, eventually, text_message
from tests.fakeplatform import FakePlatform, Reply

REWRITE = {
    "domains": {
        "sms.local": {
            "type": "sms",
            "sender": "MyShop",
            "rewrite": [{"match": r"^8(\d{10})$", "replace": r"7\1"}],
        }
    }
}
# Local date and time with its zone (the contract's words), as the UTC offset.
LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\b")


def write_config(tmp_path: Path, base_url: str, spool: Path | None = None) -> str:
    data: dict[str, Any] = base_config(spool or tmp_path / "spool.sqlite3", base_url)
    data["domains"]["sms.local"] = REWRITE["domains"]["sms.local"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


async def queue(
    capsys: pytest.CaptureFixture[str], config: str, *args: str
) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, ["queue", "-c", config, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_list_finds_a_message_by_recipient_as_written_or_as_sent(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw = await start_gateway(REWRITE)
    first = await gw.submit(text_message("Order 42"), "89001234567@sms.local")
    other = await gw.submit(text_message("Order 43"), "79005556677@sms.local")
    assert await gw.wait_final(first) == ["sent"] and await gw.wait_final(other) == ["sent"]
    c = write_config(tmp_path, platform.base_url)

    code, out, _ = await queue(capsys, c, "list")
    assert code == 0
    assert out.splitlines() == [
        "0 deliveries still to be sent or settled (queued, sending or"
        " unconfirmed), oldest first; --all shows finished ones too"
    ]
    code, out, _ = await queue(capsys, c, "list", "--all")
    header, *lines = out.splitlines()
    assert code == 0 and header.startswith("2 deliveries, oldest first")
    assert [line.split()[0] for line in lines] == [first, other]
    assert LOCAL_TIME.search(lines[0])
    assert "79001234567 (89001234567@sms.local)  sent  1 attempt" in lines[0]

    for wanted in (
        "79001234567",
        "+79001234567",
        "89001234567@sms.local",
        "89001234567",
        "89001234567@SMS.LOCAL",
    ):
        code, out, _ = await queue(capsys, c, "list", "--to", wanted)
        header, *lines = out.splitlines()
        assert code == 0 and f"to {wanted}" in header, wanted
        assert [line.split()[0] for line in lines] == [first], wanted
    code, out, _ = await queue(capsys, c, "list", "--to", "7900123456")  # a prefix: no match
    assert out.splitlines()[1:] == []

    code, out, _ = await queue(capsys, c, "list", "--state", "sent", "--since", "1h")
    assert len(out.splitlines()) == 3
    code, out, _ = await queue(capsys, c, "list", "--state", "refused")
    assert out.splitlines()[0].startswith("0 deliveries")
    code, out, err = await queue(capsys, c, "list", "--since", "soon")
    assert code == 2 and "--since" in err

    code, out, _ = await queue(capsys, c, "list", "--to", "79005556677", "--json")
    [shown] = json.loads(out)
    assert shown["queue_id"] == other and shown["sent_to"] == "79005556677"
    assert shown["recipient"] == "79005556677@sms.local" and shown["state"] == "sent"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", shown["received_at"])


async def test_show_reads_as_lines_with_local_times_and_json_on_request(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    platform.default = Reply(body='{"type": "error", "msg": "no money"}')
    gw = await start_gateway(REWRITE)
    queue_id = await gw.submit(text_message("Order 42"), "89001234567@sms.local")
    assert await gw.wait_final(queue_id) == ["refused"]
    c = write_config(tmp_path, platform.base_url)

    code, out, _ = await queue(capsys, c, "show", queue_id)
    assert code == 0
    assert f"message {queue_id}" in out and "from <app@corp.test>" in out
    assert "to 79001234567 (89001234567@sms.local): refused" in out
    assert "error     no money" in out
    events = [line for line in out.splitlines() if LOCAL_TIME.match(line.strip())]
    assert [line.split()[3] for line in events] == ["received", "refused"]
    assert LOCAL_TIME.search(out.splitlines()[1])  # "  received  <when> from <…>"
    assert "1796" not in out and "[" not in out.replace("['", "")  # no epoch, no arrays

    code, out, _ = await queue(capsys, c, "show", queue_id, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["received_at"][:4].isdigit() and "T" in shown["received_at"]
    [delivery] = shown["deliveries"]
    assert [e["kind"] for e in delivery["events"]] == ["received", "refused"]
    assert delivery["last_error"] == "no money"

    code, out, err = await queue(capsys, c, "show", "0NOSUCHID")
    assert code == 1 and out == "" and "0NOSUCHID: no such message" in err


async def test_a_missing_spool_says_so_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "spool.sqlite3"
    c = write_config(tmp_path, "https://pulse.invalid", spool=missing)
    for args in (("list",), ("show", "X"), ("retry", "X")):
        code, out, err = await queue(capsys, c, *args)
        assert code == 1 and out == ""
        assert f"no spool at {missing}" in err
    assert not missing.exists()  # looking does not create it


async def test_a_locked_spool_says_so_and_exits_1(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw = await start_gateway()
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    await gw.wait_final(queue_id)
    c = write_config(tmp_path, platform.base_url)
    holder = sqlite3.connect(tmp_path / "spool.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a long write
    try:
        code, out, err = await queue(capsys, c, "retry", queue_id)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 1 and out == ""
    assert f"spool {tmp_path / 'spool.sqlite3'} is locked" in err and "try again" in err
    code, out, _ = await queue(capsys, c, "retry", queue_id)
    assert code == 0 and "deliveries queued for a new attempt" in out  # once let go


async def test_unconfirmed_deliveries_are_listed_by_default_and_settled_by_retry(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # One slot and batches: the second message's two recipients go as one batch, whose reply
    # the gateway cannot read.
    gw = await start_gateway({"api": {"batch_size": 10, "max_concurrency": 1, "batch_wait": 0}})
    platform.script = [Reply(delay=0.4), Reply(body="<html>accepted?</html>")]
    await gw.submit(text_message("first"), "79009999999@sms.local")
    await platform.wait_for(1)
    queue_id = await gw.submit(
        text_message("pair"), ["79001111111@sms.local", "79002222222@sms.local"]
    )
    await platform.wait_for(2)
    c = write_config(tmp_path, platform.base_url)

    async def listed(*args: str) -> list[str]:
        code, out, _ = await queue(capsys, c, "list", *args)
        assert code == 0
        return out.splitlines()

    header, lines = "", []

    async def both_unconfirmed() -> bool:
        nonlocal header, lines
        header, *lines = await listed()
        return len(lines) == 2 and all("unconfirmed" in line for line in lines)

    await eventually(both_unconfirmed, within=15, every=0.05)
    assert header.startswith("2 deliveries still to be sent or settled"), header
    assert all(queue_id in line and "unknown outcome: HTTP 200" in line for line in lines)
    assert len(await listed("--state", "unconfirmed")) == 3
    code, _, _ = await queue(capsys, c, "retry", queue_id)
    assert code == 0
    gw.gateway.worker.wake()  # the daemon's own look comes within 10 s; not waited for
    assert await gw.wait_final(queue_id) == ["sent", "sent"]


async def test_every_queue_command_works_with_the_services_own_config(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As the README's service runs it: the token handed over by systemd's LoadCredential=, TLS
    # and a user token in files only the service may read, a secret from its environment. The
    # operator's shell has none of them; the queue commands need only the spool.
    gw = await start_gateway()
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    assert await gw.wait_final(queue_id) == ["sent"]
    data: dict[str, Any] = base_config(tmp_path / "spool.sqlite3", platform.base_url)
    data["api"] = {"base_url": platform.base_url, "token_credential": "pulse-token"}
    data["smtp"]["tls"] = {
        "cert": "/etc/smtp2pulse/tls/cert.pem",
        "key": "/etc/smtp2pulse/tls/key.pem",
    }
    data["smtp"]["auth"] = {
        "users": {"app": {"password_hash": hash_password("pw"), "token_file": "/nonexistent/token"}}
    }
    data["http"] = {"listen": "127.0.0.1:0", "callback_secret": "${CALLBACK_SECRET}"}
    service = tmp_path / "service.yaml"
    service.write_text(yaml.safe_dump(data))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("CALLBACK_SECRET", raising=False)

    code, out, err = await queue(capsys, str(service), "list", "--all")
    assert code == 0 and queue_id in out, err
    code, out, err = await queue(capsys, str(service), "show", queue_id)
    assert code == 0 and f"message {queue_id}" in out
    code, out, err = await queue(capsys, str(service), "retry", queue_id)
    assert code == 0 and "deliveries queued for a new attempt" in out
    code, out, err = await queue(capsys, str(service), "drop", queue_id)
    assert code == 0 and "dropped" in out

    # The rest is validated as ever: a mistake is still a config error naming its key.
    data["api"]["token_credential"] = "../pulse-token"
    data["spool"]["retries"] = 3
    service.write_text(yaml.safe_dump(data))
    code, out, err = await queue(capsys, str(service), "list")
    assert code == 78 and out == ""
    assert "api.token_credential: '../pulse-token' is not a credential name" in err
    assert "spool.retries: unknown key" in err
