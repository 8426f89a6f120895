"""The spool on its own, on SQLite and on PostgreSQL alike: group commit, one bad job or message
among many, leases, the words stored for states, callbacks and bounces."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from gateway.spool.base import BaseSpool
from gateway.spool.rows import IncomingMessage, NewDelivery, Result, Search
from gateway.spool.sqlite.sql import INSERT_ROWS
from gateway.spool.states import BounceState, State, StatusClass
from gateway.spool.steps import Job, Query
from tests.spool.conftest import OpenSpool, fetch


def incoming(n: int = 0) -> IncomingMessage:
    return IncomingMessage(
        mail_from="a@corp.test",
        peer="127.0.0.1",
        helo="c",
        raw=b"raw",
        deliveries=(NewDelivery(f"7900000000{n}@sms.local", {"sent_to": f"7900000000{n}"}),),
    )


async def queue_ids(spool: BaseSpool) -> list[str]:
    return sorted({line.queue_id for line in await spool.find_deliveries(Search())})


async def test_concurrent_stores_share_commits(spool: BaseSpool) -> None:
    before = spool.commits
    ids = await asyncio.gather(*(spool.accept(incoming(i % 10)) for i in range(200)))
    assert len(set(ids)) == 200
    assert spool.commits - before < 200  # grouped: fewer flushes than messages
    leased = await spool.lease(500, 60)
    assert len(leased) == 200
    assert await spool.lease(500, 60) == []  # leased rows are not handed out twice


async def test_a_failing_job_does_not_take_its_batch_down(spool: BaseSpool) -> None:
    def broken() -> Job[None]:
        yield Query("INSERT INTO nowhere VALUES (1)")

    results = await asyncio.gather(
        spool.accept(incoming()),
        spool.link.submit(broken),
        spool.accept(incoming(1)),
        return_exceptions=True,
    )
    assert isinstance(results[0], str) and isinstance(results[2], str)
    assert type(results[1]).__name__ == "SpoolError"
    assert await queue_ids(spool) == sorted([results[0], results[2]])


async def test_a_commit_stores_many_messages_each_with_its_own_deliveries(spool: BaseSpool) -> None:
    # The accept path's inserts of one commit go as a few multi-row statements (SQLite) or one
    # of arrays (PostgreSQL): more messages and deliveries than one SQLite statement takes,
    # each still stored under its own queue id.
    def message(n: int) -> IncomingMessage:
        return IncomingMessage(
            mail_from=f"m{n}@corp.test",
            peer="127.0.0.1",
            helo="c",
            raw=f"raw {n}".encode(),
            deliveries=tuple(
                NewDelivery(
                    f"7900{n:03d}{r:04d}@sms.local", {"sent_to": f"7900{n:03d}{r:04d}", "n": str(n)}
                )
                for r in range(n % 5 + 1)
            ),
        )

    count = 3 * INSERT_ROWS + 7
    before = spool.commits
    ids = await asyncio.gather(*(spool.accept(message(n)) for n in range(count)))
    assert spool.commits - before < count
    for n, queue_id in enumerate(ids):
        detail = await spool.show_message(queue_id)
        assert detail is not None and detail.mail_from == f"m{n}@corp.test"
        assert detail.queue_id == queue_id and detail.size == len(f"raw {n}")
        assert sorted(d.recipient for d in detail.deliveries) == [
            f"7900{n:03d}{r:04d}@sms.local" for r in range(n % 5 + 1)
        ]
    leased = await spool.lease(10_000, 60)
    assert len(leased) == sum(n % 5 + 1 for n in range(count))
    assert all(d.request["n"] == str(int(d.recipient[4:7])) for d in leased)


async def test_a_message_the_database_refuses_leaves_the_others_in_its_commit(
    spool: BaseSpool,
) -> None:
    # The inserts of a commit run together; when the database refuses one message, the others
    # are stored all the same (each alone, in a savepoint), on either backend.
    bad = dataclasses.replace(incoming(5), peer=None)  # type: ignore[arg-type]
    results = await asyncio.gather(
        *(spool.accept(incoming(n)) for n in range(4)),
        spool.accept(bad),
        *(spool.accept(incoming(n)) for n in range(4)),
        return_exceptions=True,
    )
    assert type(results[4]).__name__ == "SpoolError"
    assert "not null" in str(results[4]).lower().replace("-", " ")
    stored = [r for r in results if isinstance(r, str)]
    assert len(stored) == 8
    assert await queue_ids(spool) == sorted(stored)


async def test_a_nul_character_is_refused_alone_before_the_commit(spool: BaseSpool) -> None:
    # PostgreSQL stores no NUL in text (issue 29 item 10: one client's `EHLO a\x00b` failed
    # 18 of 180 other messages of its group commit). Refused on both backends, and only it.
    nul_helo = dataclasses.replace(incoming(7), helo="a\x00b")
    nul_text = IncomingMessage(
        mail_from="a@corp.test",
        peer="127.0.0.1",
        helo="c",
        raw=b"raw",
        deliveries=(NewDelivery("79000000008@sms.local", {"sent_text": "x\x00y"}),),
    )
    results = await asyncio.gather(
        *(spool.accept(incoming(n)) for n in range(5)),
        spool.accept(nul_helo),
        spool.accept(nul_text),
        *(spool.accept(incoming(n)) for n in range(5)),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results[5:7]] == ["BadContent", "BadContent"]
    assert "NUL" in str(results[5])
    stored = [r for r in results if isinstance(r, str)]
    assert len(stored) == 10 and await queue_ids(spool) == sorted(stored)


async def test_expired_lease_is_handed_out_again(open_spool: OpenSpool) -> None:
    clock = [1000.0]
    spool = await open_spool(clock=lambda: clock[0])
    await spool.accept(incoming())
    assert len(await spool.lease(10, 30)) == 1
    clock[0] += 29
    assert await spool.lease(10, 30) == []
    clock[0] += 2
    assert len(await spool.lease(10, 30)) == 1  # its sender died without a word


async def test_states_are_stored_as_the_words_earlier_releases_wrote(spool: BaseSpool) -> None:
    queue_id = await spool.accept(incoming())
    [delivery] = await spool.lease(10, 60)
    assert delivery.queue_id == queue_id
    await spool.record(Result(delivery.id, State.REFUSED, 0.0, "refused", "no", bounce=True))
    assert await fetch(spool, "SELECT state, bounce FROM deliveries") == [("refused", "pending")]
    detail = await spool.show_message(queue_id)
    assert detail is not None
    assert detail.deliveries[0].state is State.REFUSED
    assert detail.deliveries[0].bounce is BounceState.PENDING
    [pending] = await spool.pending_bounces()
    assert (pending.queue_id, pending.state, pending.reason) == (queue_id, "refused", "no")
    assert pending.raw == b"raw"
    await spool.settle_bounce(delivery.id, BounceState.SENT)
    assert await spool.pending_bounces() == []
    assert await spool.retry_message(queue_id) == 1
    [events] = [d.events for d in (await spool.show_message(queue_id) or detail).deliveries]
    assert [kind for _, kind, _ in events] == ["received", "refused", "bounce sent", "retry"]


async def test_a_callback_reads_kannel_status_from_the_request_by_name(spool: BaseSpool) -> None:
    # A text that merely mentions kannel_status must not make its delivery a Kannel one.
    told: list[bool] = []

    def classify(kannel: bool) -> StatusClass:
        told.append(kannel)
        return StatusClass.DELIVERED

    for request in ({"sent_text": '"kannel_status": "1"'}, {"kannel_status": "1"}):
        queue_id = await spool.accept(
            IncomingMessage(
                mail_from="a@corp.test",
                peer="127.0.0.1",
                helo="c",
                raw=b"raw",
                deliveries=(NewDelivery("79000000000@sms.local", request),),
            )
        )
        [delivery] = await spool.lease(10, 60)
        assert await spool.record_status(
            delivery.id, queue_id, "", "1", classify, max_statuses=20
        ) == ("recorded", "delivered")
        assert await spool.record_status(
            delivery.id, queue_id, "", "1", classify, max_statuses=20
        ) == ("repeated", "delivered")
    assert told == [False, False, True, True]
    assert await spool.record_status(999, "nope", "", "1", classify, max_statuses=20) == (
        "unknown",
        "unknown",
    )


async def test_results_statuses_bounces_and_the_queue_commands(spool: BaseSpool) -> None:
    queue_id = await spool.accept(
        IncomingMessage(
            mail_from="crm@corp.test",
            peer="127.0.0.1",
            helo="crm",
            raw=b"x",
            deliveries=(
                NewDelivery("79001234567", {"sent_to": "79001234567"}),
                NewDelivery("79007654321", {"sent_to": "79007654321"}),
            ),
        )
    )
    first, second = await spool.lease(10, 60)
    await spool.record(Result(first.id, State.SENT, time.time(), "sent", "p-1", "p-1"))
    await spool.record(
        Result(second.id, State.REFUSED, time.time(), "refused", "blacklisted", bounce=True)
    )
    outcome = await spool.record_status(
        first.id, queue_id, "p-1", "delivered", lambda kannel: StatusClass.DELIVERED, 20
    )
    assert outcome == ("recorded", StatusClass.DELIVERED)
    assert (
        await spool.record_status(
            first.id, queue_id, "p-1", "delivered", lambda kannel: StatusClass.DELIVERED, 20
        )
    )[0] == "repeated"
    assert (
        await spool.record_status(
            first.id, "OTHER", "", "x", lambda kannel: StatusClass.DELIVERED, 20
        )
    )[0] == "unknown"
    (bounce,) = await spool.pending_bounces()
    assert (bounce.delivery_id, bounce.reason, bounce.state) == (
        second.id,
        "blacklisted",
        State.REFUSED,
    )
    await spool.settle_bounce(second.id, BounceState.SENT)
    assert await spool.pending_bounces() == []

    detail = await spool.show_message(queue_id)
    assert detail is not None
    assert [(d.state, d.status, d.bounce) for d in detail.deliveries] == [
        (State.SENT, "delivered", None),
        (State.REFUSED, None, BounceState.SENT),
    ]
    assert [kind for _, kind, _ in detail.deliveries[0].events] == ["received", "sent", "status"]
    stats = await spool.stats()
    assert stats.by_state == {"sent": 1, "refused": 1}
    assert await spool.find_deliveries(Search(pending_only=True)) == []
    assert {line.queue_id for line in await spool.find_deliveries(Search())} == {queue_id}
    assert await spool.retry_message(queue_id) == 1  # the refused one
    assert (await spool.stats()).by_state == {"sent": 1, "queued": 1}
    assert await spool.retry_message("NOSUCH") is None
    assert await spool.drop_message(queue_id) is True
    assert await spool.show_message(queue_id) is None
    await spool.probe_writable()


async def test_finding_deliveries_and_the_overview(spool: BaseSpool) -> None:
    queue_id = await spool.accept(
        IncomingMessage(
            mail_from="crm@corp.test",
            peer="127.0.0.1",
            helo="crm",
            raw=b"x",
            deliveries=(
                NewDelivery(
                    "89001234567@sms.local",
                    {"type": "sms", "sent_to": "79001234567", "sent_text": "a"},
                ),
            ),
        )
    )
    await spool.accept(
        IncomingMessage(
            mail_from="crm@corp.test",
            peer="127.0.0.1",
            helo="crm",
            raw=b"x",
            deliveries=(NewDelivery("79005550000", {"sent_to": "79005550000"}),),
        )
    )
    for to in ("89001234567@sms.local", "79001234567", "+79001234567", "89001234567"):
        found = await spool.find_deliveries(Search(to=to))
        assert [(line.queue_id, line.sent_to) for line in found] == [(queue_id, "79001234567")], to
    assert await spool.find_deliveries(Search(to="79001234567", state="sent")) == []
    assert len(await spool.find_deliveries(Search(pending_only=True))) == 2
    overview = await spool.overview()
    assert overview.by_state == {"queued": 2}
    assert overview.oldest_waiting is not None and overview.oldest_waiting.queue_id == queue_id
    secret = await spool.callback_secret()
    assert len(secret) >= 32 and await spool.callback_secret() == secret
