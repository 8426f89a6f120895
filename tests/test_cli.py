"""The command line: preview, queue management, hash-password, serve's config errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from gateway.smtp.passwords import verify_password
from tests.conftest import TOKEN, Running, base_config, text_message
from tests.fakeplatform import FakePlatform, Reply


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(base_config(tmp_path / "spool.sqlite3", "https://pulse.invalid/api/v1/bulk"))
    )
    return path


def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_preview_needs_no_token_it_cannot_read_but_still_no_broken_config(
    tmp_path: Path,
) -> None:
    """The operator's shell has no CREDENTIALS_DIRECTORY (systemd gives it to the unit only):
    preview works without the token, shown masked, and says so; a real mistake still fails."""
    data = base_config(tmp_path / "spool.sqlite3", "https://pulse.invalid/api/v1/bulk")
    data["api"].pop("token", None)
    data["api"]["token_credential"] = "pulse-token"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    raw = text_message("Alert", "disk full").as_bytes()
    result = run_cli("preview", "-c", str(path), "--to", "79001234567@sms.local", stdin=raw)
    assert result.returncode == 0, result.stderr
    assert b"the token was not read here" in result.stderr
    (request,) = json.loads(result.stdout)
    assert request["form"]["token"] == "***"
    assert request["form"]["sent_text"] == "Alert\ndisk full"
    data["api"]["timeout"] = "soon"
    path.write_text(yaml.safe_dump(data))
    result = run_cli("preview", "-c", str(path), "--to", "79001234567@sms.local", stdin=raw)
    assert result.returncode == 78 and b"api.timeout" in result.stderr


def test_preview_prints_the_exact_requests_token_masked(config_file: Path) -> None:
    raw = text_message("Заказ 42", "Готов к выдаче").as_bytes()
    result = run_cli(
        "preview",
        "-c",
        str(config_file),
        "--to",
        "+7 900 123-45-67@sms.local".replace(" ", "-"),
        "--to",
        "ivan=example.com@mail.local",
        stdin=raw,
    )
    assert result.returncode == 0, result.stderr
    requests = json.loads(result.stdout)
    assert requests == [
        {
            "method": "POST",
            "url": "https://pulse.invalid/api/v1/bulk/send-message",
            "form": {
                "token": "***",
                "type": "sms",
                "sent_to": "79001234567",
                "sent_text": "Заказ 42\nГотов к выдаче",
                "sender": "MyShop",
            },
            "sms": {"encoding": "UCS-2", "parts": 1},
        },
        {
            "method": "POST",
            "url": "https://pulse.invalid/api/v1/bulk/send-message",
            "form": {
                "token": "***",
                "type": "email",
                "sent_to": "ivan@example.com",
                "sent_text": "Заказ 42\nГотов к выдаче",
                "sender": "shop@example.com",
            },
        },
    ]
    assert TOKEN.encode() not in result.stdout + result.stderr


def test_preview_refusal_exits_2_with_the_smtp_reply(config_file: Path, tmp_path: Path) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes(text_message().as_bytes())
    result = run_cli("preview", "-c", str(config_file), "--to", "x@gmail.com", str(eml))
    assert result.returncode == 2
    assert result.stderr.decode().startswith("550 5.7.1 ")
    assert result.stdout == b""


def test_serve_with_invalid_config_exits_78(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("domains:\n  sms.local: {type: smss}\napi: {token: t}\n")
    result = run_cli("serve", "-c", str(bad))
    assert result.returncode == 78
    assert b"domains[sms.local].type: 'smss' is not one of" in result.stderr


def test_config_from_environment_variable(tmp_path: Path, config_file: Path) -> None:
    env = {**os.environ, "SMTP2PULSE_CONFIG": str(config_file)}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert b"domain sms.local: type sms" in result.stdout


def test_hash_password_from_stdin() -> None:
    result = run_cli("hash-password", stdin=b"s3cret\n")
    assert result.returncode == 0
    hashed = result.stdout.decode().strip()
    assert hashed.startswith("scrypt$") and "s3cret" not in hashed
    assert verify_password("s3cret", hashed)
    assert not verify_password("wrong", hashed)


async def test_queue_list_show_retry_drop(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    platform.default = Reply(body='{"type": "error", "msg": "no money"}')
    gw = await start_gateway()
    queue_id = await gw.submit(text_message(), "79001234567@sms.local")
    assert await gw.wait_final(queue_id) == ["refused"]

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path / "spool.sqlite3", platform.base_url)))
    c = str(config)
    # The CLI runs beside the live daemon, as an operator would use it.
    assert await asyncio.to_thread(main, ["queue", "-c", c, "list"]) == 0
    assert queue_id not in capsys.readouterr().out  # finished: not pending
    assert await asyncio.to_thread(main, ["queue", "-c", c, "list", "--all"]) == 0
    assert f"{queue_id}  " in capsys.readouterr().out

    assert await asyncio.to_thread(main, ["queue", "-c", c, "show", queue_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    [delivery] = shown["deliveries"]
    assert delivery["state"] == "refused" and delivery["last_error"] == "no money"
    assert delivery["request"]["sent_to"] == "79001234567"
    assert "token" not in delivery["request"]

    platform.default = Reply()
    assert await asyncio.to_thread(main, ["queue", "-c", c, "retry", queue_id]) == 0
    gw.gateway.worker.wake()  # the daemon would notice on its next look at the spool
    assert await gw.wait_final(queue_id) == ["sent"]
    assert len(platform.requests) == 2

    assert await asyncio.to_thread(main, ["queue", "-c", c, "drop", queue_id]) == 0
    for action in ("show", "retry", "drop"):
        assert await asyncio.to_thread(main, ["queue", "-c", c, action, queue_id]) == 1


async def test_queue_list_into_a_closed_pipe_ends_quietly(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform, tmp_path: Path
) -> None:
    gw = await start_gateway()
    for n in range(3):
        await gw.submit(text_message(f"Order {n}"), "79001234567@sms.local")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path / "spool.sqlite3", platform.base_url)))

    def into_closed_pipe() -> tuple[int, bytes]:
        # `queue list | head -0`: the reader is gone before the first line is written.
        reader, writer = os.pipe()
        os.close(reader)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "gateway", "queue", "-c", str(config), "list", "--all"],
                stdout=writer,
                stderr=subprocess.PIPE,
                timeout=60,
                check=False,
            )
        finally:
            os.close(writer)
        return done.returncode, done.stderr

    code, err = await asyncio.to_thread(into_closed_pipe)
    assert (code, err) == (141, b"")  # 128 + SIGPIPE, as a shell reports `cat` ended by it


@pytest.mark.parametrize("where", ["below a file", "in /sys"])
def test_a_spool_path_the_service_cannot_write_names_the_key(tmp_path: Path, where: str) -> None:
    if where == "in /sys":  # EACCES even for root: what a service user meets in /var/lib
        if not Path("/sys/kernel").is_dir():
            pytest.skip("no /sys")
        spool = Path("/sys/smtp2pulse/spool.sqlite3")
    else:
        (tmp_path / "file").write_text("")
        spool = tmp_path / "file" / "spool.sqlite3"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(spool, "https://pulse.invalid/api/v1/bulk")))
    result = run_cli("serve", "-c", str(config))
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert f"cannot start: spool.path {spool}: cannot create {spool}.lock: " in err
    assert "writable by the user the service runs as" in err and "Traceback" not in err
