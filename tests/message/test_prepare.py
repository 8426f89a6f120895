"""`preview` and the daemon build their requests with the same code: the same mail sent through
the running gateway (real SMTP, fake platform) and through `smtp2pulse preview` (a subprocess)
gives the same requests."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import TOKEN, Running, base_config, merge, text_message
from tests.fakeplatform import FakePlatform

# 89001234567 is rewritten to 79001234567: the same person twice, who gets one message.
RECIPIENTS = [
    "89001234567@sms.local",
    "ivan=example.com@mail.local",
    "79001234567@sms.local",
    "chat_12345@push.local",
    "+7-900-765-43-21@sms.local",
]
CHANGES = {
    "domains": {
        "sms.local": {
            "text": "{subject} for {recipient}: {body}",
            "rewrite": [{"match": r"^8(\d{10})$", "replace": r"7\1"}],
        }
    }
}


def preview(config: Path, raw: bytes, recipients: list[str]) -> list[dict[str, Any]]:
    args = [arg for address in recipients for arg in ("--to", address)]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "preview",
            "-c",
            str(config),
            "--from",
            "app@corp.test",
            *args,
        ],
        input=raw,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    printed: list[dict[str, Any]] = json.loads(result.stdout)
    return printed


async def test_preview_prints_what_the_daemon_sends(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform, tmp_path: Path
) -> None:
    gw = await start_gateway(CHANGES)
    message = text_message("Order 42", "Ready for pickup")
    queue_id = await gw.submit(message, RECIPIENTS)
    assert await gw.wait_final(queue_id) == ["sent"] * 4
    config = tmp_path / "preview.yaml"
    config.write_text(
        yaml.safe_dump(merge(base_config(tmp_path / "spool.sqlite3", platform.base_url), CHANGES))
    )
    printed = await asyncio.to_thread(preview, config, message.as_bytes(), RECIPIENTS)

    assert len(printed) == len(platform.requests) == 4
    assert {p["url"] for p in printed} == {f"{platform.base_url}/send-message"}
    assert {p["form"].pop("token") for p in printed} == {"***"}
    assert {r.form.pop("token") for r in platform.requests} == {TOKEN}
    received = sorted((r.form for r in platform.requests), key=lambda f: f["sent_to"])
    assert sorted((p["form"] for p in printed), key=lambda f: f["sent_to"]) == received
    assert [f["sent_to"] for f in received] == [
        "79001234567",
        "79007654321",
        "chat_12345",
        "ivan@example.com",
    ]
    assert received[0]["sent_text"] == "Order 42 for 79001234567: Ready for pickup"
