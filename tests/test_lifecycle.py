"""The Gateway's lifecycle beyond the happy path: a reload keeps every restart-only key at its
running value (one list says which), and a component whose stop() fails does not keep the others,
the spool and its lock from being stopped (issue 30)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from gateway.app import Gateway
from gateway.config.loader import load_config, parse_config
from gateway.delivery.dry_run import DryRunClient
from tests.conftest import Running, base_config, merge, text_message
from tests.fakeplatform import FakePlatform


async def test_a_reload_keeps_the_restart_only_keys_and_says_which_changed(
    tmp_path: Path, platform: FakePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yaml"
    data = merge(
        base_config(tmp_path / "spool.sqlite3", platform.base_url),
        {"http": {"listen": "127.0.0.1:0"}},
    )
    path.write_text(yaml.safe_dump(data))
    gateway = Gateway(load_config(path))
    await gateway.start()
    try:
        before = gateway.config
        path.write_text(
            yaml.safe_dump(
                merge(
                    data,
                    {
                        "smtp": {"listen": "127.0.0.1:1"},
                        "spool": {"path": str(tmp_path / "other.db")},
                        "api": {
                            "base_url": "https://elsewhere.invalid/api",
                            "timeout": "9s",
                            "dry_run": True,
                            "max_concurrency": 3,
                            "sender": "process",
                        },
                        "http": {"listen": "127.0.0.1:2"},
                        "domains": {"tg.local": {"type": "telegram", "sender": "Bot"}},
                    },
                )
            )
        )
        with caplog.at_level(logging.WARNING, logger="smtp2pulse"):
            assert await gateway.reload(path) is True
        after = gateway.config
        assert "tg.local" in after.domains  # what a reload is for
        assert after.smtp.listen == before.smtp.listen and after.spool == before.spool
        assert (
            after.api.base_url,
            after.api.timeout,
            after.api.dry_run,
            after.api.max_concurrency,
            after.api.sender,
        ) == (
            before.api.base_url,
            before.api.timeout,
            before.api.dry_run,
            before.api.max_concurrency,
            before.api.sender,
        )
        assert after.http is not None and before.http is not None
        assert after.http.listen == before.http.listen
        said = {
            r.getMessage().split(": ")[1].split(" changed")[0]
            for r in caplog.records
            if "takes effect only after a restart" in r.getMessage()
        }
        assert said == {
            "smtp.listen",
            "spool.path",
            "api.base_url",
            "api.timeout",
            "api.dry_run",
            "api.max_concurrency",
            "api.sender",
            "http.listen",
        }
    finally:
        await gateway.stop()


class StopFails(DryRunClient):
    """A sender whose stop() raises, as a component with a bug in its shutdown would."""

    async def stop(self) -> None:
        raise RuntimeError("the sender's stop is broken")


async def test_a_failing_stop_is_logged_and_the_spool_is_still_closed_and_unlocked(
    tmp_path: Path, platform: FakePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    config = parse_config(base_config(tmp_path / "spool.sqlite3", platform.base_url), env={})
    gateway = Gateway(config, sender=StopFails(config.api))
    await gateway.start()
    queue_id = await Running(gateway).submit(text_message(), "79001234567@sms.local")
    with caplog.at_level(logging.ERROR, logger="smtp2pulse"):
        await gateway.stop()
    [failed] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failed.getMessage() == "stopping the sender failed; stopping the rest"
    assert failed.exc_info is not None and "broken" in str(failed.exc_info[1])

    # The spool was stopped and its lock let go: the next daemon starts on it and has the mail.
    again = Gateway(config)
    await again.start()
    try:
        detail = await again.spool.show_message(queue_id)
        assert detail is not None
    finally:
        await again.stop()
