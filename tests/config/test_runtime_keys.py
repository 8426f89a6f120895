"""`api.sender` and `event_loop`: how the daemon runs, chosen in the config file."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config.loader import parse_config
from gateway.delivery.client import PulseClient
from gateway.delivery.sender_process import SenderProcess
from gateway.errors import ConfigError


def _data(tmp_path: Any, **top: Any) -> dict[str, Any]:
    api = {"token": "t" * 20, **top.pop("api", {})}
    return {
        "api": api,
        "spool": {"path": str(tmp_path / "spool.sqlite3")},
        "domains": {"sms.local": {"type": "sms"}},
        **top,
    }


@pytest.mark.parametrize("mode", ["inline", "process"])
def test_api_sender_takes_both_modes(tmp_path: Any, mode: str) -> None:
    assert parse_config(_data(tmp_path, api={"sender": mode}), env={}).api.sender == mode
    assert parse_config(_data(tmp_path), env={}).api.sender == "inline"


def test_an_unknown_api_sender_is_named_by_its_key_path(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(_data(tmp_path, api={"sender": "thread"}), env={})
    assert error.value.problems == ["api.sender: 'thread' is not one of inline, process"]


@pytest.mark.parametrize("loop", ["auto", "uvloop", "asyncio"])
def test_event_loop_takes_each_choice(tmp_path: Any, loop: str) -> None:
    assert parse_config(_data(tmp_path, event_loop=loop), env={}).event_loop == loop
    assert parse_config(_data(tmp_path), env={}).event_loop == "auto"


def test_an_unknown_event_loop_is_named_by_its_key_path(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(_data(tmp_path, event_loop="trio"), env={})
    assert error.value.problems == ["event_loop: 'trio' is not one of auto, uvloop, asyncio"]


@pytest.mark.parametrize(("mode", "kind"), [("process", SenderProcess), ("inline", PulseClient)])
def test_api_sender_picks_the_daemons_sender_when_the_env_var_is_absent(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, mode: str, kind: type
) -> None:
    monkeypatch.delenv("SMTP2PULSE_SENDER", raising=False)
    gateway = Gateway(parse_config(_data(tmp_path, api={"sender": mode}), env={}))
    assert isinstance(gateway.sender, kind)


def test_the_env_var_overrides_api_sender(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP2PULSE_SENDER", "inline")
    gateway = Gateway(parse_config(_data(tmp_path, api={"sender": "process"}), env={}))
    assert isinstance(gateway.sender, PulseClient)
