"""A suppressed delivery (a route's drop; later a repeat or a limit) on both spools: stored with
its reason in the same commit as its message, never leased, listed by `--state suppressed`,
not an error on the status page, and an event stored with a new delivery (the route it took)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.model import Secret, SpoolConfig
from gateway.spool.backends import make_spool
from gateway.spool.rows import IncomingMessage, NewDelivery, Search, Suppressed
from gateway.spool.states import State
from tests.conftest import fresh_database

ROUTED = ("routed", "route r1: from alerts@corp.local")


def message() -> IncomingMessage:
    def request(to: str) -> dict[str, str]:
        return {"type": "sms", "sent_to": to, "sent_text": "OK: fine"}

    return IncomingMessage(
        mail_from="ups@corp.test",
        peer="127.0.0.1",
        helo="ups",
        raw=b"Subject: OK\r\n\r\nx\r\n",
        deliveries=(
            NewDelivery(
                "79001234567@sms.local",
                request("79001234567"),
                Suppressed("route", "ok-notices"),
                ("routed", "route ok-notices: dropped"),
            ),
            NewDelivery("alerts@corp.local", {}, Suppressed("route", "ok-notices")),
            NewDelivery("duty@sms.local", request("79007654321"), None, ROUTED),
            NewDelivery("duty@sms.local", request("79001112233"), None, ROUTED),
        ),
    )


@pytest.fixture(params=["sqlite", "postgresql"])
async def spool(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "sqlite":
        config = SpoolConfig(path=tmp_path / "spool.sqlite3")
    else:
        url = await fresh_database(request.getfixturevalue("pg_server"))
        config = SpoolConfig(url=Secret(url))
    store = make_spool(config)
    await store.start()
    yield store
    await store.stop()


async def test_a_suppressed_delivery_is_kept_with_its_reason_and_never_leased(spool: Any) -> None:
    queue_id = await spool.accept(message())
    leased = await spool.lease(10, 60)
    assert sorted(d.request["sent_to"] for d in leased) == ["79001112233", "79007654321"]
    detail = await spool.show_message(queue_id)
    states = [(d.recipient, d.state, d.last_error) for d in detail.deliveries]
    assert states == [
        ("79001234567@sms.local", State.SUPPRESSED, "route ok-notices"),
        ("alerts@corp.local", State.SUPPRESSED, "route ok-notices"),
        ("duty@sms.local", State.SENDING, None),
        ("duty@sms.local", State.SENDING, None),
    ]
    events = [[(kind, text) for _, kind, text in d.events] for d in detail.deliveries]
    assert events == [
        [("received", ""), ("routed", "route ok-notices: dropped")],
        [("received", "")],
        [("received", ""), ROUTED],
        [("received", ""), ROUTED],
    ]
    found = await spool.find_deliveries(Search(state="suppressed"))
    assert [(line.queue_id, line.recipient, line.last_error) for line in found] == [
        (queue_id, "alerts@corp.local", "route ok-notices"),
        (queue_id, "79001234567@sms.local", "route ok-notices"),
    ]
    overview = await spool.overview()
    assert overview.by_state["suppressed"] == 2
    assert overview.recent_errors == []  # a reason, not an error
    assert (await spool.stats()).by_state["suppressed"] == 2
    assert await spool.retry_message(queue_id) == 0  # retry does not send what was dropped
    assert await spool.lease(10, 60) == []
