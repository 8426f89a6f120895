"""http.public_url alone turns callbacks on: without http.callback_secret the spool makes one on
first start and keeps it, so callback URLs signed before a restart still verify after it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from gateway.app import Gateway
from gateway.config.model import Config
from tests.conftest import Running, base_config
from tests.fakeplatform import FakePlatform
from tests.status.test_status import base, get, submit_and_callback_url

NO_SECRET = {"http": {"listen": "127.0.0.1:0", "public_url": "https://gw.example.com"}}


async def test_a_made_secret_signs_callbacks_and_survives_a_restart(
    make_config: Callable[..., Config], platform: FakePlatform
) -> None:
    first = Gateway(make_config(NO_SECRET))
    await first.start()
    try:
        _, url = await submit_and_callback_url(Running(first), platform)
        query = url.split("?", 1)[1]
        sig = next(p for p in query.split("&") if p.startswith("sig="))
        forged = query.replace(sig, "sig=" + "0" * 32)
        assert await get(
            f"{base(Running(first))}/callback?{forged}".replace("{id}", "1").replace(
                "{status}", "sent"
            )
        ) == (403, '{"error": "forbidden"}')
        assert await get(url.replace("{id}", "1").replace("{status}", "sent")) == (
            200,
            '{"result": "recorded"}',
        )
    finally:
        await first.stop()

    second = Gateway(make_config(NO_SECRET))  # the same spool, a new process's worth
    await second.start()
    try:
        again = f"{base(Running(second))}/callback?{query}"
        assert await get(again.replace("{id}", "1").replace("{status}", "delivered")) == (
            200,
            '{"result": "recorded"}',
        )
        _, newer = await submit_and_callback_url(Running(second), platform)
        assert await get(newer.replace("{id}", "2").replace("{status}", "delivered")) == (
            200,
            '{"result": "recorded"}',
        )
    finally:
        await second.stop()


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PULSE_TOKEN", "PUBLIC_URL")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_check_config_takes_public_url_alone_but_not_a_weak_secret(tmp_path: Path) -> None:
    data = {**base_config(tmp_path / "spool.sqlite3", "https://pulse.invalid"), **NO_SECRET}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert "callbacks via https://gw.example.com/callback" in result.stdout
    data["http"] = {**NO_SECRET["http"], "callback_secret": "short"}
    path.write_text(yaml.safe_dump(data))
    result = check_config(path)
    assert result.returncode == 78
    assert result.stderr.startswith("http.callback_secret: at least 16 characters")


def test_the_readme_example_config_checks_clean() -> None:
    example = Path(__file__).parents[2] / "config" / "example.yaml"
    result = check_config(example)
    assert result.returncode == 0, result.stderr
    assert "(dry run)" in result.stdout
