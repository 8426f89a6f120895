"""api.batch_size > 1: send-list-messages over real HTTP, each reply shape the contract names,
grouping, and what an unknown outcome looks like to the operator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest

from gateway.spool.rows import Search
from tests.conftest import TOKEN, Running, eventually, text_message
from tests.fakeplatform import FakePlatform, Reply

SECRET = "callback-secret-0123456789"
HTTP = {"listen": "127.0.0.1:0", "public_url": "https://gw.example.com", "callback_secret": SECRET}
# One slot and no fill wait: while the first message is held by the platform, what arrives
# meanwhile is due together and goes as one batch when the slot frees.
BATCHED: dict[str, Any] = {
    "api": {"batch_size": 10, "max_concurrency": 1, "batch_wait": 0},
    "http": HTTP,
}
NUMBERS = [f"7900123450{n}" for n in range(5)]


async def batch_of_five(
    gw: Running, platform: FakePlatform, reply: Reply | None = None, to: list[str] | None = None
) -> tuple[str, str]:
    """A lone message held 0.4 s by the platform, then five recipients sent meanwhile: those go
    as one send-list-messages. Returns both queue ids."""
    platform.script = [Reply(delay=0.4), *([reply] if reply is not None else [])]
    first = await gw.submit(text_message("first"), "79009999999@sms.local")
    await platform.wait_for(1)
    second = await gw.submit(
        text_message("five", "at once"), to or [f"{n}@sms.local" for n in NUMBERS]
    )
    await platform.wait_for(2)
    return first, second


async def states(gw: Running, queue_id: str) -> list[str]:
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None
    return [d.state for d in detail.deliveries]


async def settled(gw: Running, queue_id: str, within: float = 10.0) -> list[str]:
    """Until no delivery of the message is queued or sending; their states."""
    found: list[str] = []

    async def done() -> bool:
        nonlocal found
        found = await states(gw, queue_id)
        return not {"queued", "sending"} & set(found)

    await eventually(done, within, every=0.02)
    return found


def base(gw: Running) -> str:
    assert gw.gateway.status is not None
    host, port = gw.gateway.status.addresses[0]
    return f"http://{host}:{port}"


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_batch_fields_once_and_each_message_with_its_own_callback(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway(BATCHED)
    _, queue_id = await batch_of_five(gw, platform)
    assert await settled(gw, queue_id) == ["sent"] * 5
    single, batch = platform.requests
    assert single.path == "/api/v1/bulk/send-message"  # an idle gateway: at once, alone
    assert batch.path == "/api/v1/bulk/send-list-messages"
    assert batch.content_type == "application/x-www-form-urlencoded"
    # Token, type and sender once, at the top; charset is absent since the domain sets none.
    assert sorted(batch.form) == ["messages", "sender", "token", "type"]
    assert (batch.form["token"], batch.form["type"], batch.form["sender"]) == (
        TOKEN,
        "sms",
        "MyShop",
    )
    messages = batch.messages
    assert [m["sent_to"] for m in messages] == NUMBERS
    for message in messages:
        assert sorted(message) == ["callback", "sent_text", "sent_to"]
        assert message["sent_text"] == "five\nat once"
    callbacks = [dict(parse_qsl(urlsplit(m["callback"]).query)) for m in messages]
    assert len({c["d"] for c in callbacks}) == 5  # one delivery each
    assert {c["q"] for c in callbacks} == {queue_id}
    assert all(c["id"] == "{id}" and c["status"] == "{status}" for c in callbacks)
    assert TOKEN not in batch.form["messages"]
    # Each message's platform id is stored from its own element of the reply.
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None
    ids = [d.platform_id for d in detail.deliveries]
    assert len(set(ids)) == 5 and None not in ids


async def test_a_list_reply_settles_each_message_on_its_own(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway(BATCHED)
    reply = [
        {"type": "success", "id": "a1"},
        {"type": "error", "msg": "blocked number"},
        {"type": "success", "id": "a3"},
        {"type": "error", "msg": "no money"},
        {"type": "success", "id": 5},
    ]
    _, queue_id = await batch_of_five(gw, platform, Reply(body=json.dumps(reply)))
    assert await settled(gw, queue_id) == ["sent", "refused", "sent", "refused", "sent"]
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None
    assert [d.platform_id for d in detail.deliveries] == ["a1", None, "a3", None, "5"]
    assert [d.last_error for d in detail.deliveries] == [
        None,
        "blocked number",
        None,
        "no money",
        None,
    ]
    assert len(platform.requests) == 2  # refusals are final: never again


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"type": "success"}', "sent"),
        ('{"type": "success", "id": "batch-9"}', "sent"),
        ('{"type": "error", "msg": "token revoked"}', "refused"),
    ],
)
async def test_a_reply_for_the_whole_batch_settles_all_alike(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    body: str,
    expected: str,
) -> None:
    gw = await start_gateway(BATCHED)
    _, queue_id = await batch_of_five(gw, platform, Reply(body=body))
    assert await settled(gw, queue_id) == [expected] * 5
    assert len(platform.requests) == 2


@pytest.mark.parametrize(
    "reply",
    [
        Reply(status=503, body="<html>down</html>"),
        Reply(status=429, body="slow down", headers={"Retry-After": "0"}),
        Reply(delay=3.0),  # past api.timeout (2s): no reply
    ],
)
async def test_5xx_429_and_no_reply_retry_the_whole_batch(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform, reply: Reply
) -> None:
    gw = await start_gateway(BATCHED)
    _, queue_id = await batch_of_five(gw, platform, reply)
    assert await settled(gw, queue_id) == ["sent"] * 5
    first_try, second_try = platform.requests[1:]
    assert first_try.batch and second_try.batch
    assert [m["sent_to"] for m in second_try.messages] == NUMBERS


@pytest.mark.parametrize(
    "body",
    [
        "<html>ok</html>",  # not JSON
        json.dumps([{"type": "success", "id": "1"}] * 4),  # a list of the wrong length
        json.dumps({"status": "accepted"}),  # another shape
    ],
)
async def test_any_other_reply_leaves_the_batch_unconfirmed_until_an_operator_settles_it(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform, body: str
) -> None:
    gw = await start_gateway(BATCHED)
    _, queue_id = await batch_of_five(gw, platform, Reply(body=body))
    assert await settled(gw, queue_id) == ["unconfirmed"] * 5
    await asyncio.sleep(0.5)  # several retry periods: nothing is sent again on its own
    assert len(platform.requests) == 2

    spool = gw.gateway.spool
    # queue list shows them (by default: they are not finished) and finds them by state.
    pending = await spool.find_deliveries(Search(pending_only=True))
    assert (
        sorted(line.state for line in pending if line.queue_id == queue_id) == ["unconfirmed"] * 5
    )
    found = await spool.find_deliveries(Search(state="unconfirmed"))
    assert len(found) == 5
    assert all(
        line.last_error and line.last_error.startswith("unknown outcome: HTTP 200")
        for line in found
    )
    # /metrics and /healthz say so; health stays 200: mail is still taken and sent.
    _, metrics = await get(base(gw) + "/metrics")
    assert 'smtp2pulse_spool_deliveries{state="unconfirmed"} 5.0' in metrics
    assert 'smtp2pulse_deliveries_total{outcome="unknown"} 5.0' in metrics
    status, health = await get(base(gw) + "/healthz")
    assert status == 200
    assert json.loads(health)["unconfirmed"] == 5

    # A callback is the platform's word that it has the message: sent.
    callback = platform.requests[1].messages[0]["callback"]
    url = (
        base(gw)
        + "/callback?"
        + urlsplit(callback).query.replace("{id}", "p-77").replace("{status}", "delivered")
    )
    assert (await get(url))[0] == 200
    after = await spool.show_message(queue_id)
    assert after is not None
    confirmed = after.deliveries[0]
    assert (confirmed.state, confirmed.platform_id, confirmed.status_class) == (
        "sent",
        "p-77",
        "delivered",
    )
    assert confirmed.last_error is None
    assert [kind for _, kind, _ in confirmed.events][-2:] == ["sent", "status"]
    assert [d.state for d in after.deliveries[1:]] == ["unconfirmed"] * 4

    # queue retry sends the rest again (the operator decided they were not taken) ...
    platform.script = []
    assert await spool.retry_message(queue_id) == 4
    gw.gateway.worker.wake()  # `queue retry` from another process waits for its next look
    assert await settled(gw, queue_id) == ["sent"] * 5
    again = platform.requests[2]
    assert [m["sent_to"] for m in again.messages] == NUMBERS[1:]
    # ... and queue drop forgets a message whatever its state.
    assert await spool.drop_message(queue_id)
    assert await spool.unconfirmed() == 0


async def test_one_unrecognised_element_leaves_only_its_message_unconfirmed(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway(BATCHED)
    reply = [
        {"type": "success", "id": "1"},
        {"type": "success", "id": "2"},
        "?",
        {"type": "success", "id": "4"},
        {"type": "success", "id": "5"},
    ]
    _, queue_id = await batch_of_five(gw, platform, Reply(body=json.dumps(reply)))
    assert await settled(gw, queue_id) == ["sent", "sent", "unconfirmed", "sent", "sent"]


async def test_different_senders_or_tokens_never_share_a_batch(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway(
        {
            **BATCHED,
            "domains": {
                "sms.local": {"type": "sms", "sender": "MyShop"},
                "alerts.local": {"type": "sms", "sender": "Alerts"},
                "viber.local": {"type": "viber", "sender": "MyShop"},
            },
        }
    )
    platform.script = [Reply(delay=0.4)]
    await gw.submit(text_message("first"), "79009999999@sms.local")
    await platform.wait_for(1)
    recipients = [
        "79001111111@sms.local",
        "79002222222@alerts.local",
        "79003333333@viber.local",
        "79004444444@sms.local",
        "79005555555@alerts.local",
    ]
    queue_id = await gw.submit(text_message("mixed"), recipients)
    assert await settled(gw, queue_id) == ["sent"] * 5
    # One slot: the first batch goes, the others are given back and go as the slot frees.
    batches = {
        (r.form["type"], r.form["sender"]): [m["sent_to"] for m in r.messages]
        for r in platform.requests[1:]
    }
    assert batches == {
        ("sms", "MyShop"): ["79001111111", "79004444444"],
        ("sms", "Alerts"): ["79002222222", "79005555555"],
        ("viber", "MyShop"): ["79003333333"],
    }
    lone = [r for r in platform.requests[1:] if not r.batch]
    assert [r.form["sent_to"] for r in lone] == ["79003333333"]  # a batch of one: send-message
    assert max(platform.max_inflight, 1) == 1


async def test_users_with_their_own_tokens_get_their_own_batches(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    from gateway.smtp.passwords import hash_password

    users = {
        name: {"password_hash": hash_password("pw-" + name), "token": f"token-of-{name}"}
        for name in ("crm", "zabbix")
    }
    gw = await start_gateway(
        {**BATCHED, "smtp": {"auth": {"required": True, "allow_without_tls": True, "users": users}}}
    )
    platform.script = [Reply(delay=0.4)]

    async def send(user: str, to: list[str]) -> None:
        def run() -> None:
            with gw.client() as client:
                client.login(user, "pw-" + user)
                client.send_message(text_message(user), "app@corp.test", to)

        await asyncio.to_thread(run)

    await send("crm", ["79009999999@sms.local"])
    await platform.wait_for(1)
    await send("crm", ["79001111111@sms.local", "79002222222@sms.local"])
    await send("zabbix", ["79003333333@sms.local", "79004444444@sms.local"])
    await platform.wait_for(3)
    await eventually(lambda: len(platform.messages) == 5)
    tokens = {
        r.form["token"]: sorted(m["sent_to"] for m in r.messages) for r in platform.requests[1:]
    }
    assert tokens == {
        "token-of-crm": ["79001111111", "79002222222"],
        "token-of-zabbix": ["79003333333", "79004444444"],
    }


async def test_batch_size_1_keeps_every_message_on_send_message(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway({"api": {"max_concurrency": 1}})
    _, queue_id = await batch_of_five(gw, platform)
    assert await settled(gw, queue_id) == ["sent"] * 5
    assert [r.path for r in platform.requests] == ["/api/v1/bulk/send-message"] * 6


async def test_batches_through_the_sender_process(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway({**BATCHED, "api": {**BATCHED["api"], "sender": "process"}})
    reply = [
        {"type": "success", "id": "1"},
        {"type": "error", "msg": "no"},
        7,
        {"type": "success", "id": "4"},
        {"type": "success", "id": "5"},
    ]
    _, queue_id = await batch_of_five(gw, platform, Reply(body=json.dumps(reply)))
    assert await settled(gw, queue_id) == ["sent", "refused", "unconfirmed", "sent", "sent"]
    assert platform.requests[1].batch


async def test_a_dry_run_logs_a_batch_with_its_token_masked_and_records_it_sent(
    start_gateway: Callable[..., Awaitable[Running]],
    platform: FakePlatform,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    caplog.set_level(logging.INFO)
    gw = await start_gateway({"api": {"dry_run": True, "batch_size": 10}})
    # Five recipients of one message are due together: one batch, even on an idle gateway.
    queue_id = await gw.submit(text_message("dry"), [f"{n}@sms.local" for n in NUMBERS])
    assert await settled(gw, queue_id) == ["sent"] * 5
    assert platform.requests == []
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "would POST" in logged and "/send-list-messages" in logged
    assert "and 5 messages" in logged and '"sent_to": "79001234504"' in logged
    assert TOKEN not in logged
