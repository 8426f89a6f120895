"""`routes` over real SMTP: who gets a mail, and how, by who sent it and what it says (issue 33).

Each test runs the gateway on 127.0.0.1 with a routes config and asserts on exactly what the fake
platform received and what the spool kept."""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.spool.rows import Search
from tests.conftest import Running, base_config, merge, text_message
from tests.fakeplatform import FakePlatform

HTML = {"Accept": "text/html"}
DUTY = ["79001234567", "79007654321"]
ROUTES: dict[str, Any] = {
    "smtp": {"max_message_size": "1MiB"},
    "domains": {
        "sms.local": {"type": "sms", "sender": "MyShop", "aliases": {"duty": DUTY}},
        "tg.local": {"type": "telegram", "recipient": "verbatim", "sender": "Bot"},
    },
    "routes": [
        {
            "name": "ups-on-battery",
            "match": {
                "from": "*@UPS.corp.local",
                "to": "alerts@corp.local",
                "subject": "(?i)on battery",
            },
            "to": ["duty@sms.local"],
        },
        {
            "name": "disaster",
            "match": {"headers": {"X-Severity": "^(High|Disaster)$"}},
            "to": ["oncall@tg.local"],
            "set": {"text": "ALERT {subject}"},
        },
        {"name": "ok-notices", "match": {"subject": "^OK:"}, "drop": True},
        {"name": "after-ok", "match": {"subject": "OK"}, "set": {"sender": "Second"}},
        {
            "name": "hostile",
            "match": {"body": "(a+)+$", "to": "*@sms.local"},
            "set": {"sender": "Matched"},
        },
        # A served domain's address that is no phone number, burnt into a printer.
        {"name": "printer", "match": {"to": "printer@sms.local"}, "to": ["duty@sms.local"]},
    ],
}


@pytest.fixture
async def routed(start_gateway: Callable[..., Awaitable[Running]]) -> Running:
    return await start_gateway(ROUTES)


def metric(gw: Running, prefix: str) -> list[str]:
    return [
        line
        for line in gw.gateway.metrics.exposition().decode().splitlines()
        if line.startswith(prefix)
    ]


async def send_raw(
    gw: Running, sender: str, recipients: list[str], raw: bytes
) -> tuple[list[tuple[int, bytes]], tuple[int, bytes]]:
    """MAIL, each RCPT, DATA; the RCPT replies and DATA's (or (0, b"") when DATA is not sent)."""

    def run() -> tuple[list[tuple[int, bytes]], tuple[int, bytes]]:
        with gw.client() as client:
            client.mail(sender)
            rcpts = [client.rcpt(to) for to in recipients]
            if not any(code == 250 for code, _ in rcpts):
                return rcpts, (0, b"")
            return rcpts, client.data(raw)

    return await asyncio.to_thread(run)


async def test_a_fixed_address_device_is_routed_by_sender_to_a_group(
    routed: Running, platform: FakePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "smtp2pulse.smtp")
    message = text_message("UPS1: On Battery", "Input power lost")
    queue_id = await routed.submit(message, "alerts@corp.local", sender="ups1@ups.corp.local")
    requests = await platform.wait_for(2)
    assert sorted(r.form["sent_to"] for r in requests) == DUTY
    assert {r.form["type"] for r in requests} == {"sms"}
    assert {r.form["sent_text"] for r in requests} == {"UPS1: On Battery\nInput power lost"}
    detail = await routed.gateway.spool.show_message(queue_id)
    assert detail is not None
    assert [d.recipient for d in detail.deliveries] == ["duty@sms.local"] * 2
    for delivery in detail.deliveries:
        assert ("routed", "route ups-on-battery: from alerts@corp.local") in [
            (kind, text) for _, kind, text in delivery.events
        ]
    [accepted] = [r.getMessage() for r in caplog.records if "accepted" in r.getMessage()]
    assert f"queue_id={queue_id}" in accepted
    assert "route=ups-on-battery (to duty@sms.local)" in accepted
    assert metric(routed, "smtp2pulse_routed_total") == [
        'smtp2pulse_routed_total{route="ups-on-battery"} 1.0'
    ]


async def test_an_address_of_a_served_domain_that_is_no_recipient_is_taken_by_a_route(
    routed: Running, platform: FakePlatform
) -> None:
    await routed.submit(text_message("Toner low", "tray 2"), "printer@sms.local")
    requests = await platform.wait_for(2)
    assert sorted(r.form["sent_to"] for r in requests) == DUTY
    # Without a route naming it, such an address is refused at RCPT as before.
    rcpts, _ = await send_raw(routed, "app@corp.test", ["scanner@sms.local"], b"")
    assert rcpts[0][0] == 553


async def test_the_from_header_matches_too_and_other_senders_are_refused_after_data(
    routed: Running, platform: FakePlatform
) -> None:
    message = text_message("On battery", "x")
    message.replace_header("From", "UPS <ups2@ups.corp.local>")
    await routed.submit(message, "alerts@corp.local", sender="relay@corp.test")
    assert len(await platform.wait_for(2)) == 2

    # Not from the UPS: alerts@corp.local is taken at RCPT (a route names it), but no route
    # takes the message, so DATA gets what an unserved domain gets, and nothing is stored.
    rcpts, data = await send_raw(
        routed,
        "printer@corp.test",
        ["alerts@corp.local"],
        text_message("On battery", "x").as_bytes(),
    )
    assert [code for code, _ in rcpts] == [250]
    assert data[0] == 550 and data[1].startswith(b"5.7.1 <alerts@corp.local>: no route")
    # An address no route names is refused at RCPT, as before.
    rcpts, data = await send_raw(routed, "ups1@ups.corp.local", ["other@corp.local"], b"")
    assert rcpts[0][0] == 550 and rcpts[0][1].startswith(b"5.7.1")
    assert data == (0, b"")
    stored = await routed.gateway.spool.find_deliveries(Search())
    assert len({line.queue_id for line in stored}) == 1
    assert len(platform.requests) == 2
    assert metric(routed, 'smtp2pulse_smtp_refusals_total{reason="no_route"}') == [
        'smtp2pulse_smtp_refusals_total{reason="no_route"} 1.0'
    ]


async def test_a_route_only_address_beside_a_served_one_is_refused_when_no_route_matches(
    routed: Running, platform: FakePlatform
) -> None:
    rcpts, data = await send_raw(
        routed,
        "app@corp.test",
        ["79001112233@sms.local", "alerts@corp.local"],
        text_message("Nothing to see", "x").as_bytes(),
    )
    assert [code for code, _ in rcpts] == [250, 250]
    assert data[0] == 550 and data[1].startswith(b"5.7.1")
    assert await routed.gateway.spool.find_deliveries(Search()) == []
    await asyncio.sleep(0.2)
    assert platform.requests == []


async def test_a_severity_header_sends_to_another_channel_type(
    routed: Running, platform: FakePlatform
) -> None:
    await routed.submit(
        text_message("Disk full", "on db1", X_Severity="Disaster"),
        ["79001112233@sms.local", "79002223344@sms.local"],
    )
    await routed.submit(
        text_message("Disk filling", "on db2", X_Severity="Warning"), "79001112233@sms.local"
    )
    requests = await platform.wait_for(2)
    forms = sorted((r.form for r in requests), key=lambda form: form["type"])
    # The two SMS recipients of the first message went to one Telegram recipient instead.
    assert forms == [
        {
            "token": forms[0]["token"],
            "type": "sms",
            "sent_to": "79001112233",
            "sent_text": "Disk filling\non db2",
            "sender": "MyShop",
        },
        {
            "token": forms[0]["token"],
            "type": "telegram",
            "sent_to": "oncall",
            "sent_text": "ALERT Disk full",
            "sender": "Bot",
        },
    ]


async def test_a_drop_route_keeps_the_message_suppressed_and_sends_nothing(
    routed: Running, platform: FakePlatform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dropped = await routed.submit(
        text_message("OK: disk space", "fine"),
        ["79001112233@sms.local", "alerts@corp.local"],
        sender="ups1@ups.corp.local",
    )
    sent = await routed.submit(text_message("Problem: disk", "full"), "79001112233@sms.local")
    [request] = await platform.wait_for(1)
    assert request.form["sent_text"] == "Problem: disk\nfull"
    await routed.wait_final(sent)
    detail = await routed.gateway.spool.show_message(dropped)
    assert detail is not None
    assert [(d.recipient, d.state, d.last_error, d.attempts) for d in detail.deliveries] == [
        ("79001112233@sms.local", "suppressed", "route ok-notices", 0),
        ("alerts@corp.local", "suppressed", "route ok-notices", 0),
    ]
    assert metric(routed, "smtp2pulse_suppressed_total") == [
        'smtp2pulse_suppressed_total{domain="sms.local",reason="route"} 1.0',
        'smtp2pulse_suppressed_total{domain="unserved",reason="route"} 1.0',
    ]
    # The operator's view: queue list --state suppressed, with the reason.
    config = tmp_path / "config.yaml"
    data = merge(base_config(tmp_path / "spool.sqlite3", platform.base_url), ROUTES)
    config.write_text(yaml.safe_dump(data))
    code = await asyncio.to_thread(
        main, ["queue", "-c", str(config), "list", "--state", "suppressed"]
    )
    out = capsys.readouterr().out
    lines = out.splitlines()[1:]
    assert code == 0 and len(lines) == 2, out
    assert all(
        dropped in line and "suppressed" in line and "route ok-notices" in line for line in lines
    )
    found = await routed.gateway.spool.find_deliveries(Search(state="suppressed"))
    assert {line.queue_id for line in found} == {dropped}
    await asyncio.sleep(0.3)  # the worker had every chance to send it
    assert len(platform.requests) == 1


async def test_the_first_matching_route_wins(routed: Running, platform: FakePlatform) -> None:
    # "OK: …" matches ok-notices and after-ok; ok-notices comes first and drops it.
    await routed.submit(text_message("OK: all good", "x"), "79001112233@sms.local")
    # "All OK" matches only after-ok.
    await routed.submit(text_message("All OK", "x"), "79001112233@sms.local")
    [request] = await platform.wait_for(1)
    assert request.form["sender"] == "Second"
    assert request.form["sent_text"] == "All OK\nx"
    await asyncio.sleep(0.2)
    assert len(platform.requests) == 1


async def test_a_pathological_pattern_on_a_long_body_returns_at_once(
    routed: Running, platform: FakePlatform
) -> None:
    # (a+)+$ on "aaa…a!" takes Python's re exponential time; RE2 answers in linear time.
    body = "a" * 100_000 + "!"
    started = time.monotonic()
    await routed.submit(text_message("Report", body), "79001112233@sms.local")
    elapsed = time.monotonic() - started
    [request] = await platform.wait_for(1)
    assert "sender" in request.form and request.form["sender"] == "MyShop"  # no route took it
    assert elapsed < 2.0, elapsed
    # And one that does end in a's is matched, just as fast.
    await routed.submit(text_message("Report", "a" * 100_000), "79001112233@sms.local")
    requests = await platform.wait_for(2)
    assert requests[1].form["sender"] == "Matched"
    assert time.monotonic() - started < 4.0


async def test_preview_agrees_with_the_daemon(
    routed: Running, platform: FakePlatform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    data = merge(base_config(tmp_path / "other.sqlite3", platform.base_url), ROUTES)
    config.write_text(yaml.safe_dump(data))
    message = text_message("UPS3: on battery", "since 03:12")
    eml = tmp_path / "m.eml"
    eml.write_bytes(message.as_bytes())
    code = await asyncio.to_thread(
        main,
        [
            "preview",
            "-c",
            str(config),
            "--to",
            "alerts@corp.local",
            "--from",
            "ups3@ups.corp.local",
            str(eml),
        ],
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "route ups-on-battery: to duty@sms.local" in captured.err
    printed = json.loads(captured.out)
    assert [entry["route"] for entry in printed] == [
        {"name": "ups-on-battery", "action": "to duty@sms.local"}
    ] * 2
    await routed.submit(message, "alerts@corp.local", sender="ups3@ups.corp.local")
    requests = await platform.wait_for(2)
    sent = [{k: v for k, v in r.form.items() if k not in ("token", "callback")} for r in requests]
    previewed = [{k: v for k, v in entry["form"].items() if k != "token"} for entry in printed]
    assert sorted(sent, key=str) == sorted(previewed, key=str)

    # A dropped message: preview says so and prints no request.
    eml.write_bytes(text_message("OK: fine", "x").as_bytes())
    code = await asyncio.to_thread(
        main, ["preview", "-c", str(config), "--to", "79001112233@sms.local", str(eml)]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert json.loads(captured.out) == [
        {
            "recipient": "79001112233@sms.local",
            "suppressed": "route ok-notices",
            "route": {"name": "ok-notices", "action": "drop"},
        }
    ]
    # And one no route takes, to an address only a route names: the daemon's 550 5.7.1.
    eml.write_bytes(text_message("Hello", "x").as_bytes())
    code = await asyncio.to_thread(
        main, ["preview", "-c", str(config), "--to", "alerts@corp.local", str(eml)]
    )
    captured = capsys.readouterr()
    # (The running daemon's log lines may share stderr in-process: the reply is the last line.)
    assert code == 2
    assert captured.err.splitlines()[-1].startswith("550 5.7.1 <alerts@corp.local>")


async def test_check_config_lists_the_routes(
    tmp_path: Path, platform: FakePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    data = merge(base_config(tmp_path / "spool.sqlite3", platform.base_url), ROUTES)
    config.write_text(yaml.safe_dump(data))
    assert await asyncio.to_thread(main, ["check-config", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert (
        "  route 1 ups-on-battery: from '*@UPS.corp.local', to 'alerts@corp.local',"
        " subject '(?i)on battery' -> to duty@sms.local"
    ) in out
    assert "  route 3 ok-notices: subject '^OK:' -> drop" in out
    assert (
        "  route 2 disaster: headers.X-Severity '^(High|Disaster)$' -> to oncall@tg.local;"
        " set text=ALERT {subject}" in out
    )


async def test_smtp_refusal_of_unknown_domain_is_unchanged_without_routes(gw: Running) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        await gw.send(text_message(), "alerts@corp.local")
    [(code, text)] = caught.value.recipients.values()
    assert code == 550 and text.startswith(b"5.7.1")


async def test_queue_show_the_message_page_and_metrics_name_the_route(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import aiohttp

    gw = await start_gateway(merge(ROUTES, {"http": {"listen": "127.0.0.1:0"}}))
    routed_id = await gw.submit(
        text_message("On battery", "x"), "alerts@corp.local", sender="ups1@ups.corp.local"
    )
    dropped_id = await gw.submit(text_message("OK: fine", "x"), "79001112233@sms.local")
    await gw.wait_final(routed_id)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(merge(base_config(tmp_path / "spool.sqlite3", platform.base_url), ROUTES))
    )
    assert await asyncio.to_thread(main, ["queue", "-c", str(config), "show", routed_id]) == 0
    out = capsys.readouterr().out
    assert out.count("routed  route ups-on-battery: from alerts@corp.local") == 2
    assert await asyncio.to_thread(main, ["queue", "-c", str(config), "show", dropped_id]) == 0
    out = capsys.readouterr().out
    assert ": suppressed" in out and "  reason    route ok-notices" in out
    assert "routed  route ok-notices: dropped" in out

    assert gw.gateway.status is not None
    host, port = gw.gateway.status.addresses[0]
    web = f"http://{host}:{port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{web}/messages/{routed_id}") as response:  # JSON
            detail = await response.json()
        assert [[e[1:] for e in d["events"]][:2] for d in detail["deliveries"]] == [
            [["received", ""], ["routed", "route ups-on-battery: from alerts@corp.local"]]
        ] * 2
        async with session.get(f"{web}/queue/{routed_id}", headers=HTML) as response:
            page = await response.text()
        # The message's route at its top (the console), then each delivery's history.
        assert page.count("route ups-on-battery: from alerts@corp.local") == 3
        async with session.get(f"{web}/queue/{dropped_id}", headers=HTML) as response:
            page = await response.text()
        assert '<th scope="row">reason</th><td class="wrap">route ok-notices</td>' in page
        async with session.get(f"{web}/metrics") as response:
            metrics = await response.text()
    assert 'smtp2pulse_routed_total{route="ups-on-battery"} 1.0' in metrics
    assert 'smtp2pulse_routed_total{route="ok-notices"} 1.0' in metrics
    assert 'smtp2pulse_suppressed_total{domain="sms.local",reason="route"} 1.0' in metrics
