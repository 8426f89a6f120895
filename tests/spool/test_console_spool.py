"""The console's reads and actions (spool/console.py) on SQLite and on PostgreSQL alike: search
by recipient, queue id, sender and subject words with filters and a cursor; today's deliveries
and routes; the 24 hours per hour; retry, drop and settle written into the history with who."""

from __future__ import annotations

import dataclasses
import time

from gateway.spool.base import BaseSpool
from gateway.spool.console import ConsoleSearch
from gateway.spool.rows import DayLimits, IncomingMessage, NewDelivery, Result, Spend, Suppressed
from gateway.spool.states import State
from tests.spool.conftest import OpenSpool


def message(subject: str, *to: str, sender: str = "crm@corp.test") -> IncomingMessage:
    return IncomingMessage(
        mail_from=sender,
        peer="127.0.0.1",
        helo="c",
        raw=b"raw",
        deliveries=tuple(
            NewDelivery(address, {"type": "sms", "sent_to": address.split("@")[0]})
            for address in to
        ),
        subject=subject,
    )


async def found(spool: BaseSpool, **search: object) -> list[tuple[str, str]]:
    lines = await spool.console_find(ConsoleSearch(**search))  # type: ignore[arg-type]
    return [(f.line.queue_id, f.line.recipient) for f in lines]


async def test_search_by_recipient_queue_id_sender_and_subject_with_filters(
    spool: BaseSpool,
) -> None:
    order = await spool.accept(message("Order 42 is ready", "79001111111@sms.local"))
    alert = await spool.accept(
        message("Disk FULL on db1", "79002222222@sms.local", "ivan@mail.local", sender="zabbix@x")
    )
    assert await found(spool, text="79001111111") == [(order, "79001111111@sms.local")]
    assert await found(spool, text=alert.lower()) == [
        (alert, "ivan@mail.local"),
        (alert, "79002222222@sms.local"),
    ]
    assert {q for q, _ in await found(spool, text="disk full")} == {alert}  # subject words
    assert {q for q, _ in await found(spool, text="ZABBIX")} == {alert}  # sender
    assert await found(spool, text="order 4_") == []  # a LIKE wildcard is a character here
    assert await found(spool, domain="mail.local") == [(alert, "ivan@mail.local")]
    assert await found(spool, state="queued", domain="sms.local", text="disk") == [
        (alert, "79002222222@sms.local")
    ]
    assert await found(spool, state="sent") == []
    lines = await spool.console_find(ConsoleSearch(text="order"))
    assert lines[0].subject == "Order 42 is ready" and lines[0].mail_from == "crm@corp.test"
    assert await spool.console_subject(order) == "Order 42 is ready"
    assert await spool.console_subject("0NOSUCH") is None


async def test_pages_follow_the_cursor_without_a_gap_or_a_repeat(spool: BaseSpool) -> None:
    for n in range(3):
        await spool.accept(message(f"m{n}", *(f"7900000{n}{i:03d}@sms.local" for i in range(7))))
    seen: list[tuple[str, int]] = []
    before = None
    while True:
        page = await spool.console_find(ConsoleSearch(before=before, limit=4))
        seen += [(f.line.queue_id, f.line.delivery_id) for f in page]
        if len(page) < 4:
            break
        before = seen[-1]
    assert len(seen) == 21 and len(set(seen)) == 21
    assert seen == sorted(seen, reverse=True)  # newest first throughout


async def test_the_day_counts_states_reasons_and_routes(spool: BaseSpool) -> None:
    kept = IncomingMessage(
        mail_from="a@b",
        peer="p",
        helo="h",
        raw=b"r",
        deliveries=(
            NewDelivery(
                "79001@sms.local",
                {"type": "sms"},
                Suppressed("route", "ok-notices"),
                ("routed", "route ok-notices: dropped"),
            ),
            NewDelivery("79002@sms.local", {"type": "sms"}, Suppressed("repeat", "of X")),
            NewDelivery(
                "79003@sms.local",
                {"type": "sms", "sent_text": "hi"},
                None,
                ("routed", "route duty: from alerts@corp.local"),
            ),
        ),
    )
    queue_id = await spool.accept(kept)
    day = await spool.console_day(time.time() - 60)
    counts = sorted((c.domain, c.state, c.reason, c.count) for c in day.counts)
    assert counts == [
        ("sms.local", "queued", "", 1),
        ("sms.local", "suppressed", "repeat", 1),
        ("sms.local", "suppressed", "route", 1),
    ]
    assert day.sent == {} and day.routed == {"ok-notices": 1, "duty": 1}
    later = await spool.console_day(time.time() + 60)
    assert later.counts == [] and later.routed == {}
    [queued] = await spool.lease(10, 60)
    await spool.record(Result(queued.id, State.SENT, time.time(), "sent", "p"))
    day = await spool.console_day(time.time() - 60)
    assert day.sent == {queued.id: "sms.local"}
    counts = sorted((c.domain, c.state, c.reason, c.count) for c in day.counts)
    assert ("sms.local", "sent", "", 1) in counts  # the same row, counted by its state
    requests = await spool.console_requests([queued.id])
    assert requests == {queued.id: ("79003@sms.local", {"type": "sms", "sent_text": "hi"})}
    assert queue_id


async def test_the_last_24_hours_per_hour(open_spool: OpenSpool) -> None:
    now = [time.time() - 5 * 3600]
    spool = await open_spool(clock=lambda: now[0])
    await spool.accept(message("old", "79001@sms.local", "79002@sms.local"))
    (first, _second) = await spool.lease(10, 24 * 3600)  # the second stays leased
    await spool.record(Result(first.id, State.SENT, now[0], "sent", "p"))
    now[0] = time.time()
    await spool.accept(message("new", "79003@sms.local"))
    [third] = await spool.lease(10, 60)
    await spool.record(Result(third.id, State.FAILED, now[0], "failed", "gave up"))
    hourly = await spool.console_hourly()
    assert len(hourly.accepted) == 24 and hourly.start <= now[0] < hourly.start + 24 * 3600
    assert hourly.accepted[-1] == 1 and hourly.accepted[-6] == 2
    assert hourly.sent[-6] == 1 and hourly.failed[-1] == 1
    assert sum(hourly.sent) == 1 and sum(hourly.suppressed) == 0


async def test_actions_change_what_they_say_and_write_who_into_the_history(
    spool: BaseSpool,
) -> None:
    queue_id = await spool.accept(message("s", "79001@sms.local", "79002@sms.local"))
    first, second = await spool.lease(10, 60)
    await spool.record(
        Result(first.id, State.UNCONFIRMED, time.time(), "unknown", "unknown outcome"),
        Result(second.id, State.FAILED, time.time(), "failed", "gave up"),
    )
    assert await spool.console_act("settle", queue_id, "10.1.2.3") == 1
    assert await spool.console_act("settle", queue_id, "10.1.2.3") == 0  # nothing left to settle
    assert await spool.console_act("retry", "0NOSUCH", "10.1.2.3") is None
    failed = await spool.console_failed(time.time() - 3600, time.time(), 10)
    assert [line.delivery_id for line in failed] == [second.id]
    assert await spool.console_retry_failed(time.time() - 3600, time.time(), "10.1.2.4") == 1
    assert await spool.console_act("drop", queue_id, "10.1.2.5") == 1  # the retried one
    detail = await spool.show_message(queue_id)
    assert detail is not None
    one, two = detail.deliveries
    assert one.state == State.SENT and one.events[-1][1:] == (
        "settled",
        "settled as sent from the console by 10.1.2.3",
    )
    assert two.state == State.SUPPRESSED
    assert two.last_error == "dropped from the console by 10.1.2.5"
    assert [e[1:] for e in two.events[-2:]] == [
        ("retry", "retry of every failed delivery requested from the console by 10.1.2.4"),
        ("dropped", "dropped from the console by 10.1.2.5"),
    ]
    assert await spool.console_act("retry", queue_id, "x") == 0  # suppressed stays so


def limited(limits: DayLimits, *to: str) -> IncomingMessage:
    base = message("over", *to)
    spent = tuple(
        dataclasses.replace(d, spend=Spend(limits, d.request["sent_to"], 1))
        for d in base.deliveries
    )
    return dataclasses.replace(base, deliveries=spent)


async def test_held_deliveries_counted_released_within_limits_sent_anyway_or_dropped(
    spool: BaseSpool,
) -> None:
    now = time.time()
    limits = DayLimits("sms.local", "2026-12-07", now + 3600, messages_per_day=1)
    today = {"sms.local": limits}
    await spool.accept(limited(limits, "79001@sms.local"))
    held = await spool.accept(limited(limits, "79002@sms.local"))
    other = await spool.accept(limited(limits, "79003@sms.local"))
    day = await spool.console_day(now - 60)
    [counted] = [c for c in day.counts if c.state == "held"]
    assert (counted.domain, counted.reason, counted.count) == (
        "sms.local",
        "limit messages_per_day 1 reached",
        2,
    )
    assert counted.until == limits.day_ends
    assert (await spool.console_hourly()).held[-1] == 2
    assert [f.picture for f in await spool.console_find(ConsoleSearch())] == [False] * 3
    assert await spool.console_act("retry", held, "10.0.0.1") == 0  # a retry never sends it
    assert await spool.console_act("release", held, "10.0.0.1") == 1
    detail = await spool.show_message(held)
    assert detail is not None
    [delivery] = detail.deliveries
    assert delivery.state == State.HELD and delivery.next_attempt_at <= time.time()
    assert await spool.console_send_anyway(held, "10.0.0.2", today) == 1
    assert await spool.console_send_anyway(held, "10.0.0.2", today) == 0
    assert await spool.console_send_anyway("0NOSUCH", "10.0.0.2", today) is None
    detail = await spool.show_message(held)
    assert detail is not None
    [delivery] = detail.deliveries
    assert delivery.state == State.QUEUED and delivery.last_error is None
    assert [e[1:] for e in delivery.events[-2:]] == [
        ("release", "release within its limits requested from the console by 10.0.0.1"),
        ("released", "sent now over its limit from the console by 10.0.0.2"),
    ]
    assert await spool.budget_used(today) == {"sms.local": (2, 2)}  # spent, as a release does
    assert await spool.console_act("drop", other, "10.0.0.3") == 1  # a held one, dropped
    assert await spool.budget_used(today) == {"sms.local": (2, 2)}  # spends nothing
