"""A domain's `limits` (issue 32, item 3), over real SMTP to a running gateway on both spools:
per_recipient, messages_per_day and parts_per_day with over_limit hold, drop and refuse, the
day's notice, /metrics' budget gauges — and concurrent clients never get past a limit."""

from __future__ import annotations

import asyncio
import itertools
import json
import smtplib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.app import Gateway
from gateway.cli import main
from gateway.config.loader import parse_config
from gateway.errors import ConfigError
from gateway.message.limits import today
from gateway.spool import Search
from tests.conftest import Running, base_config, eventually, fresh_database, merge, text_message
from tests.fakeplatform import FakePlatform

Start = Callable[..., Awaitable[Running]]
PHONE = "79001234567"
# 2 parts (UCS-2: 67 a part) with the subject before it.
CYRILLIC = "Сбой питания на объекте номер семь. Проверьте источник бесперебойного питания."


def limited(limits: dict[str, Any], **domain: Any) -> dict[str, Any]:
    sms = {"type": "sms", "sender": "MyShop", "limits": limits, **domain}
    return {"domains": {"sms.local": sms}}


class Starter:
    """Starts a gateway with `changes` to the base config; `reload` gives it other changes
    through a config file, as SIGHUP would."""

    def __init__(self, tmp_path: Path, platform: FakePlatform, url: str | None) -> None:
        self.tmp_path, self.platform, self.url = tmp_path, platform, url
        self.started: list[Gateway] = []

    def data(self, changes: dict[str, Any] | None) -> dict[str, Any]:
        data = base_config(self.tmp_path / "spool.sqlite3", self.platform.base_url)
        if self.url is not None:
            del data["spool"]["path"]
            data["spool"]["url"] = self.url
        data = merge(data, changes or {})
        data["domains"] = {name: d for name, d in data["domains"].items() if d is not None}
        return data

    async def __call__(self, changes: dict[str, Any] | None = None) -> Running:
        gateway = Gateway(parse_config(self.data(changes), env={}))
        await gateway.start()
        self.started.append(gateway)
        return Running(gateway)

    async def reload(self, gw: Running, changes: dict[str, Any]) -> None:
        path = self.tmp_path / "reloaded.yaml"
        path.write_text(yaml.safe_dump(self.data(changes), allow_unicode=True))
        assert await gw.gateway.reload(path) is True


@pytest.fixture(params=["sqlite", "pg"])
async def start(
    request: pytest.FixtureRequest, tmp_path: Path, platform: FakePlatform
) -> AsyncIterator[Starter]:
    """A gateway on each spool: the limits count the same on both."""
    url = None
    if request.param == "pg":
        url = await fresh_database(request.getfixturevalue("pg_server"))
    starter = Starter(tmp_path, platform, url)
    yield starter
    for gateway in reversed(starter.started):
        await gateway.stop()


# Clients run on threads of their own: on the loop's default executor, ten clients waiting for
# their replies would take every thread the gateway's own reads (the SQLite spool's) need.
CLIENTS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="smtp-client")


def client(gw: Running, to: list[str] | str, body: str) -> asyncio.Future[tuple[str, int, str]]:
    return asyncio.get_running_loop().run_in_executor(CLIENTS, attempt, gw, to, body)


def attempt(gw: Running, to: list[str] | str, body: str) -> tuple[str, int, str]:
    """One message; where it ended: ("rcpt", code, text) if a RCPT was refused, else
    ("data", code, text)."""
    recipients = [to] if isinstance(to, str) else to
    with smtplib.SMTP(gw.host, gw.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("app@corp.test")
        for rcpt in recipients:
            code, text = client.rcpt(rcpt)
            if code != 250:
                return "rcpt", code, text.decode()
        code, text = client.data(text_message("alert", body).as_bytes())
        return "data", code, text.decode()


async def burst(
    gw: Running, count: int, to: Callable[[int], str] = lambda n: f"{PHONE}@sms.local"
) -> list[tuple[str, int, str]]:
    """`count` clients at once, each with one message."""
    return list(await asyncio.gather(*(client(gw, to(n), f"burst {n}") for n in range(count))))


async def held_count(gw: Running, count: int) -> bool:
    return len(await in_state(gw, "held")) == count


async def in_state(gw: Running, state: str) -> list[Any]:
    return await gw.gateway.spool.find_deliveries(Search(state=state))


# --- config -------------------------------------------------------------------------------------


def test_limits_are_checked_at_load_naming_their_key(tmp_path: Path) -> None:
    data = base_config(tmp_path / "s.sqlite3", "http://127.0.0.1:1")
    bad = merge(
        data,
        {
            "domains": {
                "sms.local": {"limits": {"per_recipient": "ten an hour", "over_limit": "wait"}},
                "mail.local": {"limits": {"parts_per_day": 10, "notify": "ops@nowhere.test"}},
                "push.local": {"limits": {"per_recipient": "5/2d", "colour": 1}},
            }
        },
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(bad, env={})
    lines = caught.value.problems
    sms, mail = "domains[sms.local].limits", "domains[mail.local].limits"
    assert f"{sms}.per_recipient: 'ten an hour' is not COUNT/DURATION (e.g. 10/1h)" in lines
    assert f"{sms}.over_limit: 'wait' is not one of hold, drop, refuse" in lines
    for start in (
        f"{mail}.parts_per_day: only for types",
        f"{mail}.notify: not an address served here",
        "domains[push.local].limits.per_recipient: '5/2d'",
        "domains[push.local].limits.colour: unknown key",
    ):
        assert any(line.startswith(start) for line in lines), (start, lines)
    notify = "ops=example.com@mail.local"
    good = parse_config(
        merge(data, limited({"per_recipient": "10/1h", "parts_per_day": 50, "notify": notify})),
        env={},
    )
    limits = good.domains["sms.local"].limits
    assert limits is not None and limits.per_recipient == (10, 3600.0)
    assert limits.over_limit == "hold" and limits.notify == "ops=example.com@mail.local"


# --- per_recipient ------------------------------------------------------------------------------


async def test_per_recipient_holds_a_burst_then_sends_it_when_the_window_passes(
    start: Start, platform: FakePlatform
) -> None:
    gw = await start(limited({"per_recipient": "4/3s"}))
    started = time.monotonic()
    results = await burst(gw, 10)
    assert [r[1] for r in results] == [250] * 10  # hold: every one accepted
    await platform.wait_for(4)
    held = await in_state(gw, "held")
    assert len(held) == 6
    assert all("limit per_recipient 4/3s reached; held until" in h.last_error for h in held)
    await asyncio.sleep(0.5)
    assert len(platform.messages) == 4  # exactly the limit, whatever the burst
    # The window slides: 4 more once the first 4 are 3 s old, the last 2 three seconds later.
    await eventually(lambda: len(platform.messages) == 8, within=10)
    assert time.monotonic() - started >= 2.5
    assert len(platform.messages) == 8
    await eventually(lambda: len(platform.messages) == 10, within=10)
    assert time.monotonic() - started >= 5.5
    assert await in_state(gw, "held") == []
    # No five within one window at the platform either (arrival lags admission a little: the
    # margin is for a loaded machine).
    times = sorted(r.at for r in platform.requests)
    assert all(later - earlier >= 2.0 for earlier, later in zip(times, times[4:], strict=False))
    # Another recipient has a window of its own.
    assert (await client(gw, "79009999999@sms.local", "other"))[1] == 250
    await platform.wait_for(11)


async def test_per_recipient_drop_suppresses_with_reason_limit(
    start: Start, platform: FakePlatform
) -> None:
    gw = await start(limited({"per_recipient": "3/1h", "over_limit": "drop"}))
    results = await burst(gw, 10)
    assert [r[1] for r in results] == [250] * 10
    await platform.wait_for(3)
    suppressed = await in_state(gw, "suppressed")
    assert len(suppressed) == 7
    assert {s.last_error for s in suppressed} == {"limit per_recipient 3/1h"}
    exposition = gw.gateway.metrics.exposition().decode()
    assert 'smtp2pulse_suppressed_total{domain="sms.local",reason="limit"} 7.0' in exposition
    await asyncio.sleep(0.5)
    assert len(platform.messages) == 3


async def test_per_recipient_refuse_at_rcpt_and_after_data_storing_nothing(
    start: Start, platform: FakePlatform
) -> None:
    gw = await start(limited({"per_recipient": "3/1h", "over_limit": "refuse"}))
    results = await burst(gw, 10)
    accepted = [r for r in results if r[1] == 250]
    refused = [r for r in results if r[1] != 250]
    assert len(accepted) == 3
    # Those in flight together passed RCPT's read; the commit refused what did not fit.
    assert {(code, text.split(" ", 1)[0]) for _, code, text in refused} == {(452, "4.2.2")}
    await platform.wait_for(3)
    # Now RCPT knows: refused there, before any data.
    stage, code, text = await client(gw, f"{PHONE}@sms.local", "late")
    assert (stage, code) == ("rcpt", 452)
    assert text.startswith("4.2.2 sms.local: limit per_recipient 3/1h")
    everything = await gw.gateway.spool.find_deliveries(Search())
    assert len(everything) == 3  # nothing of a refused message is stored
    await asyncio.sleep(0.3)
    assert len(platform.messages) == 3


# --- daily budgets ------------------------------------------------------------------------------


async def test_parts_per_day_refuses_a_whole_message_after_data(
    start: Start, platform: FakePlatform
) -> None:
    gw = await start(limited({"parts_per_day": 5, "over_limit": "refuse"}))
    assert (await client(gw, f"{PHONE}@sms.local", CYRILLIC))[1] == 250
    await platform.wait_for(1)
    assert "бесперебойного" in platform.messages[0]["sent_text"]
    # 2 parts used: two recipients of 2 parts each pass RCPT (1 part would fit), not the commit.
    to = ["79001111111@sms.local", "79002222222@sms.local"]
    stage, code, text = await client(gw, to, CYRILLIC)
    assert (stage, code) == ("data", 452) and "limit parts_per_day 5 reached" in text
    assert len(await gw.gateway.spool.find_deliveries(Search())) == 1
    # One recipient of 2 parts fits (4), then a third would not (6 > 5): held it would be,
    # refused it is.
    assert (await client(gw, to[0], CYRILLIC))[1] == 250
    assert (await client(gw, to[1], CYRILLIC))[:2] == ("data", 452)
    # At 4 of 5 parts a short (one-part) text still fits; then RCPT refuses at once.
    assert (await client(gw, to[1], "short"))[1] == 250
    assert (await client(gw, to[1], "short"))[:2] == ("rcpt", 452)
    await platform.wait_for(3)
    await asyncio.sleep(0.3)
    assert len(platform.messages) == 3


async def test_messages_per_day_holds_until_the_domains_next_day(
    start: Start, platform: FakePlatform
) -> None:
    gw = await start(limited({"messages_per_day": 2}, timezone="Asia/Tokyo"))
    # Mail that arrived yesterday (the handler's clock): that day's budget is 2.
    yesterday = time.time() - 86400
    gw.gateway.smtp.handler.clock = lambda: yesterday
    for n in range(2):
        assert (await client(gw, f"7900000000{n}@sms.local", "old"))[1] == 250
    await platform.wait_for(2)
    # The third is over yesterday's budget: held until the end of that day in Tokyo, which is
    # past, so it is released at once into today's budget.
    queue_id = (await client(gw, "79000000009@sms.local", "third"))[2].split()[-1]
    await platform.wait_for(3)
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None
    assert [kind for _, kind, _ in detail.deliveries[0].events][:2] == ["received", "released"]
    # Today: the released one spent 1 of 2; one more goes, the next waits for Tokyo's midnight.
    gw.gateway.smtp.handler.clock = time.time
    assert (await client(gw, f"{PHONE}@sms.local", "today"))[1] == 250
    assert (await client(gw, f"{PHONE}@sms.local", "over"))[1] == 250
    await platform.wait_for(4)
    await eventually(lambda: held_count(gw, 1))
    (held,) = await in_state(gw, "held")
    assert "limit messages_per_day 2 reached; held until" in held.last_error
    await asyncio.sleep(0.5)
    assert len(platform.messages) == 4


async def test_parts_per_day_holds_cyrillic_parts_until_the_next_day(
    start: Start, platform: FakePlatform
) -> None:
    gw = await start(limited({"parts_per_day": 4}, timezone="America/Los_Angeles"))
    yesterday = time.time() - 86400
    gw.gateway.smtp.handler.clock = lambda: yesterday
    for n in range(3):  # 2 parts each: the third would make 6 of yesterday's 4
        assert (await client(gw, f"7900000000{n}@sms.local", CYRILLIC))[1] == 250
    await platform.wait_for(3)  # the third held until yesterday's end, past: released today
    gw.gateway.smtp.handler.clock = time.time
    for n in range(2):  # today: 2 parts spent by the released one, 2 more fit, then no more
        assert (await client(gw, f"7900000001{n}@sms.local", CYRILLIC))[1] == 250
    await platform.wait_for(4)
    await eventually(lambda: held_count(gw, 1))
    (held,) = await in_state(gw, "held")
    assert "limit parts_per_day 4 reached; held until" in held.last_error
    used = await gw.gateway.spool.budget_used(today(gw.gateway.config, time.time()))
    assert used == {"sms.local": (2, 4)}
    await asyncio.sleep(0.5)
    assert len(platform.messages) == 4


# --- the notice, /metrics -----------------------------------------------------------------------


async def test_notify_is_told_once_and_metrics_show_the_budget(
    start: Start, platform: FakePlatform
) -> None:
    gw = await start(
        merge(
            limited(
                {"messages_per_day": 2, "parts_per_day": 9, "notify": "ops=example.com@mail.local"}
            ),
            {"http": {"listen": "127.0.0.1:0"}},
        )
    )
    results = await burst(gw, 6, to=lambda n: f"7900000000{n}@sms.local")
    assert [r[1] for r in results] == [250] * 6
    await platform.wait_for(3)  # two SMS, one notice
    await asyncio.sleep(1.5)  # and no second notice, however many more are held
    results = await burst(gw, 2, to=lambda n: f"7900000001{n}@sms.local")
    await asyncio.sleep(1.5)
    notices = [m for m in platform.messages if m["type"] == "email"]
    assert len(notices) == 1, notices
    notice = notices[0]
    assert notice["sent_to"] == "ops@example.com"
    assert "sms.local: limit messages_per_day 2 reached" in notice["sent_text"]
    assert "queue list --state held" in notice["sent_text"]
    assert len([m for m in platform.messages if m["type"] == "sms"]) == 2
    assert len(await in_state(gw, "held")) == 6
    assert gw.gateway.status is not None
    host, port = gw.gateway.status.addresses[0]
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{host}:{port}/metrics") as response,
    ):
        metrics = await response.text()
    assert 'smtp2pulse_domain_budget_used{domain="sms.local",unit="messages"} 2.0' in metrics
    assert 'smtp2pulse_domain_budget_limit{domain="sms.local",unit="messages"} 2.0' in metrics
    assert 'smtp2pulse_domain_budget_used{domain="sms.local",unit="parts"} 2.0' in metrics
    assert 'smtp2pulse_domain_budget_limit{domain="sms.local",unit="parts"} 9.0' in metrics


# --- two gateways, one PostgreSQL database ------------------------------------------------------


async def test_two_gateways_on_one_database_never_exceed_a_limit_together(
    tmp_path: Path, platform: FakePlatform, pg_url: str
) -> None:
    data = base_config(tmp_path / "unused.sqlite3", platform.base_url)
    del data["spool"]["path"]
    data["spool"]["url"] = pg_url
    config = parse_config(
        merge(data, limited({"per_recipient": "5/1h", "messages_per_day": 12})), env={}
    )
    gateways = [Gateway(config), Gateway(config)]
    await asyncio.gather(*(gateway.start() for gateway in gateways))
    try:
        gws = [Running(gateway) for gateway in gateways]
        first, second = gws
        # Twenty clients at once to one recipient, half through each gateway: five in all.
        results = await asyncio.gather(
            *(client(gws[n % 2], f"{PHONE}@sms.local", f"one {n}") for n in range(20))
        )
        assert [r[1] for r in results] == [250] * 20
        await platform.wait_for(5)
        # Twenty to twenty recipients: the day's 12 messages, 5 spent already, so 7 more.
        results = await asyncio.gather(
            *(client(gws[n % 2], f"790011100{n:02d}@sms.local", f"many {n}") for n in range(20))
        )
        assert [r[1] for r in results] == [250] * 20
        await platform.wait_for(12)
        await asyncio.sleep(1.0)
        assert len(platform.messages) == 12
        assert len(await first.gateway.spool.find_deliveries(Search(state="held"))) == 28
        used = await second.gateway.spool.budget_used(today(config, time.time()))
        assert used == {"sms.local": (12, 12)}  # messages and parts, one part each
    finally:
        for gateway in reversed(gateways):
            await gateway.stop()


# --- seeing it: queue list / show, /messages/ID, the status page, preview -----------------------


async def test_held_ones_are_shown_with_their_reason_and_preview_says_so(
    start_gateway: Start, platform: FakePlatform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    changes = merge(limited({"per_recipient": "1/1h"}), {"http": {"listen": "127.0.0.1:0"}})
    gw = await start_gateway(changes)
    assert (await client(gw, f"{PHONE}@sms.local", "first"))[1] == 250
    held_id = (await client(gw, f"{PHONE}@sms.local", "second"))[2].split()[-1]
    await platform.wait_for(1)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(merge(base_config(tmp_path / "spool.sqlite3", platform.base_url), changes))
    )
    queue = ["queue", "-c", str(config)]
    assert await asyncio.to_thread(main, [*queue, "list", "--state", "held"]) == 0
    out = capsys.readouterr().out
    assert held_id in out
    assert "  held  0 attempts  limit per_recipient 1/1h reached; held until" in out
    assert await asyncio.to_thread(main, [*queue, "show", held_id]) == 0
    out = capsys.readouterr().out
    assert ": held" in out and "limit per_recipient 1/1h reached; held until" in out
    assert gw.gateway.status is not None
    host, port = gw.gateway.status.addresses[0]
    web = f"http://{host}:{port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{web}/messages/{held_id}") as response:
            detail = await response.json()
        assert detail["deliveries"][0]["state"] == "held"
        assert "per_recipient 1/1h" in detail["deliveries"][0]["last_error"]
        async with session.get(f"{web}/", headers={"Accept": "text/html"}) as response:
            page = await response.text()
        assert "held" in page
    # preview reads the same counts: a third would be held, another recipient sent.
    message = tmp_path / "mail.eml"
    message.write_bytes(text_message("alert", "third").as_bytes())
    preview = ["preview", "-c", str(config), "--to", f"{PHONE}@sms.local", str(message)]
    assert await asyncio.to_thread(main, preview) == 0
    captured = capsys.readouterr()
    assert f"{PHONE}@sms.local: would be held: limit per_recipient 1/1h reached until" in (
        captured.err
    )
    assert json.loads(captured.out)[0]["limit"].startswith("held: limit per_recipient 1/1h")
    preview[-2] = "79005555555@sms.local"
    assert await asyncio.to_thread(main, preview) == 0
    assert "limit" not in json.loads(capsys.readouterr().out)[0]


async def test_a_notice_to_the_limited_domain_itself_is_exempt_and_cannot_loop(
    start: Start, platform: FakePlatform
) -> None:
    gw = await start(
        limited(
            {"messages_per_day": 1, "over_limit": "drop", "notify": "duty@sms.local"},
            aliases={"duty": "79005550000"},
        )
    )
    for n in range(3):
        assert (await client(gw, f"7900000000{n}@sms.local", f"alert {n}"))[1] == 250
    await platform.wait_for(2)  # the one the day allows, and the notice beyond it
    await asyncio.sleep(1.5)
    assert sorted(m["sent_to"] for m in platform.messages) == ["79000000000", "79005550000"]
    notice = next(m for m in platform.messages if m["sent_to"] == "79005550000")
    assert "limit messages_per_day 1 reached" in notice["sent_text"]
    assert "accepted and suppressed" in notice["sent_text"]
    # The notice spent nothing: the day's count is the one message.
    config = gw.gateway.config
    used = await gw.gateway.spool.budget_used(today(config, time.time()))
    assert used["sms.local"][0] == 1
    assert len(await in_state(gw, "suppressed")) == 2


async def test_a_message_a_limit_refused_is_new_when_sent_again_not_a_retransmission(
    start: Start, platform: FakePlatform
) -> None:
    """A 452 stored nothing, so the same message sent again (the same Message-ID, as a client
    retries a temporary refusal) must be taken and sent once there is room: neither answered
    as a retransmission of the refused one nor suppressed as its repeat."""
    gw = await start(limited({"parts_per_day": 3, "over_limit": "refuse"}, repeat_window="10m"))
    yesterday = time.time() - 86400
    gw.gateway.smtp.handler.clock = lambda: yesterday
    assert (await client(gw, "79001111111@sms.local", CYRILLIC))[1] == 250  # 2 of 3 parts
    await platform.wait_for(1)
    retried = text_message("alert", CYRILLIC, Message_ID="<ups-7@corp.test>").as_bytes()

    def send() -> tuple[int, str]:
        with smtplib.SMTP(gw.host, gw.port, timeout=30) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("app@corp.test")
            assert smtp.rcpt(f"{PHONE}@sms.local")[0] == 250  # 1 part would fit
            code, text = smtp.data(retried)
            return code, text.decode()

    loop = asyncio.get_running_loop()
    code, text = await loop.run_in_executor(CLIENTS, send)
    assert code == 452, text  # 2 more parts would make 4 of 3: refused after DATA
    gw.gateway.smtp.handler.clock = time.time  # a new day: room again
    code, text = await loop.run_in_executor(CLIENTS, send)
    assert code == 250, text
    await platform.wait_for(2)
    assert platform.messages[1]["sent_to"] == PHONE
    assert await in_state(gw, "suppressed") == []


# --- what the review found (issue 32, adversarial review) ----------------------------------------


async def test_a_refusal_at_rcpt_counts_as_held_back_and_sends_the_days_notice(
    start: Starter, platform: FakePlatform
) -> None:
    """One message at a time, the second refused at RCPT: the commit never sees it, yet the
    limit tripped and the notice (with how many were held back) must go."""
    limits = {"messages_per_day": 1, "over_limit": "refuse", "notify": "ops=example.com@mail.local"}
    http = {"http": {"listen": "127.0.0.1:0", "public_url": "https://gw.example/"}}
    gw = await start(merge(limited(limits), http))
    assert (await client(gw, f"{PHONE}@sms.local", "first"))[1] == 250
    await platform.wait_for(1)
    for n in range(2):
        assert (await client(gw, f"7900000000{n}@sms.local", "over"))[:2] == ("rcpt", 452)
    await platform.wait_for(2)
    await asyncio.sleep(1.5)  # and once only
    notices = [m for m in platform.messages if m["type"] == "email"]
    assert len(notices) == 1, notices
    text = notices[0]["sent_text"]
    assert "sms.local: limit messages_per_day 1 reached" in text
    assert "1 message(s) over it so far" in text  # the second refusal came after the notice
    assert "refused with 452 4.2.2" in text
    # Nothing of a refused one is in the spool: the status page and /metrics tell of them.
    assert "See: the status page https://gw.example/, /metrics" in text
    assert len([m for m in platform.messages if m["type"] == "sms"]) == 1


@pytest.mark.parametrize("now", ["lifted", "raised", "domain gone"])
async def test_a_reload_that_lifts_a_limit_releases_the_held_ones_at_once(
    start: Starter, platform: FakePlatform, now: str
) -> None:
    """Held until the domain's next midnight; the operator raises the limit (or drops it, or
    the domain): they go now, not tomorrow."""
    gw = await start(limited({"messages_per_day": 1}))
    for n in range(3):
        assert (await client(gw, f"7900000000{n}@sms.local", f"alert {n}"))[1] == 250
    await platform.wait_for(1)
    await eventually(lambda: held_count(gw, 2))
    if now == "lifted":
        await start.reload(gw, limited({}))
    elif now == "raised":
        await start.reload(gw, limited({"messages_per_day": 2}))
    else:
        await start.reload(gw, {"domains": {"sms.local": None}})
    expected = 2 if now == "raised" else 3
    await platform.wait_for(expected, within=5)
    await asyncio.sleep(0.5)
    assert len(platform.messages) == expected
    assert len(await in_state(gw, "held")) == 3 - expected


async def test_a_held_delivery_past_give_up_after_fails_unsent(
    start: Starter, platform: FakePlatform
) -> None:
    """Held until the window has room (3 s), by which time it is older than give_up_after
    (2 s): a storm's message is not sent that late, it is failed (it used to be sent)."""
    gw = await start(merge(limited({"per_recipient": "1/3s"}), {"spool": {"give_up_after": "2s"}}))
    assert (await client(gw, f"{PHONE}@sms.local", "first"))[1] == 250
    queue_id = (await client(gw, f"{PHONE}@sms.local", "second"))[2].split()[-1]
    await platform.wait_for(1)
    await eventually(lambda: held_count(gw, 1))

    async def failed() -> bool:
        return len(await in_state(gw, "failed")) == 1

    await eventually(failed, within=6)
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None
    assert detail.deliveries[0].last_error == "held by a limit past spool.give_up_after; not sent"
    await asyncio.sleep(0.5)
    assert len(platform.messages) == 1


async def test_two_gateways_accepting_and_releasing_at_once_never_deadlock(
    tmp_path: Path, platform: FakePlatform, pg_url: str
) -> None:
    """Each gateway takes mail for one domain while both release the held ones of both: a
    commit holding one gateway's accepts (one domain's rows) and a release (the other's)
    crosses the other gateway's. PostgreSQL's own count of deadlocks must stay 0, and no
    recipient gets two within its window, whichever gateway admitted them."""
    import asyncpg

    data = base_config(tmp_path / "unused.sqlite3", platform.base_url)
    del data["spool"]["path"]
    data["spool"]["url"] = pg_url
    limits = {"per_recipient": "1/1s"}
    both = {"domains": {"sms.local": limited(limits)["domains"]["sms.local"]}}
    both["domains"]["sms2.local"] = {**both["domains"]["sms.local"]}
    config = parse_config(merge(data, both), env={})
    gateways = [Gateway(config), Gateway(config)]
    await asyncio.gather(*(gateway.start() for gateway in gateways))
    try:
        gws = [Running(gateway) for gateway in gateways]

        def to(n: int) -> str:
            return f"790011100{n % 8:02d}@" + ("sms.local" if n % 2 == 0 else "sms2.local")

        async def sender(first: int) -> list[int]:
            codes = []
            for n in range(first, first + 80, 8):
                codes.append((await client(gws[n % 2], to(n), f"storm {n}"))[1])
            return codes

        codes = await asyncio.gather(*(sender(k) for k in range(8)))
        assert all(code == 250 for found in codes for code in found)
        await platform.wait_for(80, within=60)
        conn = await asyncpg.connect(pg_url)
        try:
            await asyncio.sleep(1.0)  # the backends report their counts when idle
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            deadlocks = await conn.fetchval(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
            )
        finally:
            await conn.close()
        assert deadlocks == 0
        by_recipient: dict[str, list[float]] = {}
        for request in platform.requests:
            by_recipient.setdefault(request.form["sent_to"], []).append(request.at)
        for times in by_recipient.values():
            times.sort()
            assert all(b - a >= 0.5 for a, b in itertools.pairwise(times)), times
    finally:
        for gateway in reversed(gateways):
            await gateway.stop()


async def test_crossing_accepts_and_releases_of_two_gateways_never_deadlock(pg_url: str) -> None:
    """The crossing made on purpose, on two real spools of one database: each gateway's
    commit holds an accept of one domain (its rows locked first) and a release that takes the
    oldest due held delivery, which SKIP LOCKED makes the other domain's for one of them. Ten
    times over; PostgreSQL counts every deadlock it had to break."""
    import asyncpg

    from gateway.spool import DayLimits, IncomingMessage, NewDelivery, Spend
    from gateway.spool.pg.store import PgSpool

    spools = [PgSpool(pg_url), PgSpool(pg_url)]
    for spool in spools:
        await spool.start()
    now = time.time()
    today = {
        name: DayLimits(name, "2026-01-01", now + 86400, per_recipient=(1, 0.2))
        for name in ("a.local", "b.local")
    }

    def message(domain: str, to: str) -> IncomingMessage:
        spend = Spend(today[domain], to, 1)
        request = {"sent_to": to, "sent_text": "x"}
        return IncomingMessage("", "peer", "helo", b"x", (NewDelivery(to, request, spend=spend),))

    async def one_commit(spool: PgSpool, new: IncomingMessage) -> None:
        """A release and an accept in one group commit, as under load."""
        release = asyncio.ensure_future(spool.release_held(today, 86400, limit=1))
        await asyncio.sleep(0)  # its job is queued; the accept's joins it
        await asyncio.gather(release, spool.accept(new))

    try:
        for n in range(10):
            for domain in ("b.local", "a.local"):  # b's held one is the older
                for _ in range(2):  # the second to one recipient is held for 0.2 s
                    await spools[0].accept(message(domain, f"held{n}"))
            await asyncio.sleep(0.25)
            await asyncio.gather(
                one_commit(spools[0], message("a.local", f"new{n}")),
                one_commit(spools[1], message("b.local", f"new{n}")),
            )
    finally:
        for spool in spools:
            await spool.stop()  # a backend that ends reports its counts
    conn = await asyncpg.connect(pg_url)
    try:
        await asyncio.sleep(0.5)
        deadlocks = await conn.fetchval(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        )
        held = await conn.fetchval("SELECT count(*) FROM deliveries WHERE state = 'held'")
    finally:
        await conn.close()
    assert deadlocks == 0
    assert held == 0  # and every release went through


async def test_metrics_drop_the_series_of_a_limit_a_reload_removed(
    start: Starter, platform: FakePlatform
) -> None:
    http = {"http": {"listen": "127.0.0.1:0"}}
    gw = await start(merge(limited({"messages_per_day": 5, "parts_per_day": 9}), http))
    assert (await client(gw, f"{PHONE}@sms.local", "one"))[1] == 250
    await platform.wait_for(1)
    assert gw.gateway.status is not None
    host, port = gw.gateway.status.addresses[0]

    async def metrics() -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{host}:{port}/metrics") as response,
        ):
            return await response.text()

    assert 'smtp2pulse_domain_budget_limit{domain="sms.local",unit="parts"} 9.0' in await metrics()
    await start.reload(gw, merge(limited({"messages_per_day": 5}), http))
    text = await metrics()
    assert 'smtp2pulse_domain_budget_limit{domain="sms.local",unit="messages"} 5.0' in text
    assert 'budget_limit{domain="sms.local",unit="parts"}' not in text  # no stale limit
    await start.reload(gw, http)  # no limits at all
    assert "budget_used{" not in await metrics() and "budget_limit{" not in await metrics()


@pytest.mark.parametrize(
    ("zone", "moments"),
    [
        # Clocks go from 24:00 to 23:00 (the hour before midnight twice), then 00:00 is skipped
        # on the spring day: the day still ends at the first instant of the next date.
        ("America/Santiago", ["2026-04-05T02:30:00+00:00", "2026-04-05T03:30:00+00:00"]),
        ("America/Santiago", ["2026-09-06T03:30:00+00:00"]),
        ("Europe/Berlin", ["2026-03-28T23:30:00+00:00", "2026-10-24T22:30:00+00:00"]),
        ("Australia/Lord_Howe", ["2026-04-04T13:15:00+00:00", "2026-10-03T13:15:00+00:00"]),
    ],
)
def test_a_domains_day_ends_at_its_next_local_date_across_dst(
    zone: str, moments: list[str]
) -> None:
    """A held delivery is due when its day ends: that must be after now (never a past time the
    worker would spin on) and the first instant of the next local date."""
    import datetime
    import zoneinfo

    from gateway.config.model import DomainConfig, Limits
    from gateway.message.limits import day_limits

    tz = zoneinfo.ZoneInfo(zone)
    domain = DomainConfig("sms.local", "sms", timezone=tz, limits=Limits(messages_per_day=1))
    for moment in moments:
        now = datetime.datetime.fromisoformat(moment).timestamp()
        limits = day_limits(domain, now)
        assert limits is not None
        date = datetime.datetime.fromtimestamp(now, tz).date()
        assert limits.day == date.isoformat()
        assert now < limits.day_ends <= now + 25 * 3600
        assert datetime.datetime.fromtimestamp(limits.day_ends, tz).date() > date
        assert datetime.datetime.fromtimestamp(limits.day_ends - 1, tz).date() == date


async def test_two_gateways_send_the_days_notice_once(
    tmp_path: Path, platform: FakePlatform, pg_url: str
) -> None:
    """Both gateways see the trip (a burst through each, refused at RCPT and after DATA): one
    notice between them."""
    data = base_config(tmp_path / "unused.sqlite3", platform.base_url)
    del data["spool"]["path"]
    data["spool"]["url"] = pg_url
    notify = "ops=example.com@mail.local"
    limits = {"messages_per_day": 2, "over_limit": "refuse", "notify": notify}
    config = parse_config(merge(data, limited(limits)), env={})
    gateways = [Gateway(config), Gateway(config)]
    await asyncio.gather(*(gateway.start() for gateway in gateways))
    try:
        gws = [Running(gateway) for gateway in gateways]
        for _ in range(2):
            await asyncio.gather(
                *(client(gws[n % 2], f"7900000000{n}@sms.local", f"burst {n}") for n in range(8))
            )
        await platform.wait_for(3)
        await asyncio.sleep(2.0)
        assert len([m for m in platform.messages if m["type"] == "sms"]) == 2
        assert len([m for m in platform.messages if m["type"] == "email"]) == 1
    finally:
        for gateway in reversed(gateways):
            await gateway.stop()


async def test_queue_retry_leaves_a_held_delivery_held_and_drop_removes_it(
    start: Starter, platform: FakePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator's retry is no way past a limit (raise it and reload), and `queue retry`
    says so; a drop forgets the held one, which had spent nothing."""
    changes = limited({"per_recipient": "1/1h"})
    gw = await start(changes)
    assert (await client(gw, f"{PHONE}@sms.local", "first"))[1] == 250
    held_id = (await client(gw, f"{PHONE}@sms.local", "second"))[2].split()[-1]
    await platform.wait_for(1)
    await eventually(lambda: held_count(gw, 1))
    spool = gw.gateway.spool
    config = start.tmp_path / "queue.yaml"
    config.write_text(yaml.safe_dump(start.data(changes), allow_unicode=True))
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["queue", "-c", str(config), "retry", held_id]) == 0
    said = capsys.readouterr().out
    assert "0 deliveries queued" in said
    assert "1 held by a limit (limit per_recipient 1/1h reached; held until" in said
    assert "raise it and reload" in said
    assert await spool.retry_message(held_id) == 0
    await asyncio.sleep(0.5)
    assert len(await in_state(gw, "held")) == 1 and len(platform.messages) == 1
    assert await spool.drop_message(held_id) is True
    assert await in_state(gw, "held") == []
    used = await spool.budget_used(today(gw.gateway.config, time.time()))
    assert used == {"sms.local": (1, 1)}


async def test_a_refusal_after_data_alone_still_sends_the_days_notice(
    start: Starter, platform: FakePlatform
) -> None:
    """4 of 5 parts spent, quietly; then a 2-part text passes RCPT (1 part would fit) and is
    refused after DATA, and no mail follows. Nothing was stored, yet the trip's notice must go."""
    limits = {"parts_per_day": 5, "over_limit": "refuse", "notify": "ops=example.com@mail.local"}
    gw = await start(limited(limits))
    for n in range(2):
        assert (await client(gw, f"7900000000{n}@sms.local", CYRILLIC))[1] == 250
    await platform.wait_for(2)
    await asyncio.sleep(1.5)  # the gateway's look after those found nothing tripped
    assert (await client(gw, f"{PHONE}@sms.local", CYRILLIC))[:2] == ("data", 452)
    await platform.wait_for(3, within=15)
    notices = [m for m in platform.messages if m["type"] == "email"]
    assert len(notices) == 1 and "refused with 452 4.2.2" in notices[0]["sent_text"]
