"""What batches ask of a spool, on SQLite and on PostgreSQL alike: leases given back unsent,
a batch's outcomes in one transaction, and unconfirmed deliveries until something settles them."""

from __future__ import annotations

import time

from gateway.spool.interface import SpoolInterface
from gateway.spool.rows import IncomingMessage, NewDelivery, Result, Search
from gateway.spool.states import State, StatusClass


def message(*numbers: str) -> IncomingMessage:
    return IncomingMessage(
        mail_from="crm@corp.test",
        peer="127.0.0.1",
        helo="crm",
        raw=b"Subject: x\r\n\r\nb\r\n",
        deliveries=tuple(
            NewDelivery(f"{n}@sms.local", {"type": "sms", "sent_to": n, "sent_text": "hi"})
            for n in numbers
        ),
    )


async def test_released_leases_are_due_again_with_no_attempt_counted(spool: SpoolInterface) -> None:
    await spool.accept(message("79000000001", "79000000002", "79000000003"))
    leased = await spool.lease(10, 60)
    assert len(leased) == 3
    assert await spool.lease(10, 60) == []
    assert await spool.release([leased[1].id, leased[2].id]) == 2
    again = await spool.lease(10, 60)
    assert [(d.id, d.attempts) for d in again] == [(leased[1].id, 0), (leased[2].id, 0)]
    # Only a live lease is given back: after a delivery's outcome, release changes nothing.
    await spool.record(Result(leased[0].id, State.SENT, time.time(), "sent", "", "p1"))
    assert await spool.release([leased[0].id]) == 0


async def test_a_batch_is_recorded_at_once_and_unconfirmed_ones_wait(spool: SpoolInterface) -> None:
    queue_id = await spool.accept(message("79000000001", "79000000002", "79000000003"))
    one, two, three = await spool.lease(10, 60)
    now = time.time()
    await spool.record(
        Result(one.id, State.SENT, now, "sent", "", "p1"),
        Result(two.id, State.UNCONFIRMED, now, "unknown", "unknown outcome: x"),
        Result(three.id, State.UNCONFIRMED, now, "unknown", "unknown outcome: x"),
    )
    assert await spool.unconfirmed() == 2
    assert await spool.next_due() is None  # never sent again on its own
    assert await spool.lease(10, 0) == []
    assert (await spool.stats()).by_state == {"sent": 1, "unconfirmed": 2}
    assert {line.queue_id for line in await spool.find_deliveries(Search(pending_only=True))} == {
        queue_id
    }  # shown as not finished
    found = await spool.find_deliveries(Search(pending_only=True))
    assert sorted(line.state for line in found) == ["unconfirmed", "unconfirmed"]
    assert await spool.purge(now + 10**6) == 0  # kept until settled

    # A callback settles one: the platform has it.
    result, meaning = await spool.record_status(
        two.id, queue_id, "p2", "delivered", lambda kannel: StatusClass.DELIVERED, 20
    )
    assert (result, meaning) == ("recorded", StatusClass.DELIVERED)
    detail = await spool.show_message(queue_id)
    assert detail is not None
    confirmed = detail.deliveries[1]
    assert (confirmed.state, confirmed.platform_id, confirmed.last_error) == (
        State.SENT,
        "p2",
        None,
    )
    assert [kind for _, kind, _ in confirmed.events] == ["received", "unknown", "sent", "status"]
    assert await spool.unconfirmed() == 1
    # `queue retry` makes the other due again.
    assert await spool.retry_message(queue_id) == 1
    (retried,) = await spool.lease(10, 60)
    assert (retried.id, retried.attempts) == (three.id, 1)


async def test_a_batch_with_a_message_dropped_meanwhile_records_the_rest(
    spool: SpoolInterface,
) -> None:
    kept = await spool.accept(message("79000000001"))
    dropped = await spool.accept(message("79000000002"))
    one, two = await spool.lease(10, 60)
    assert await spool.drop_message(dropped)  # `queue drop` while the batch is in flight
    now = time.time()
    await spool.record(
        Result(one.id, State.SENT, now, "sent", "", "p1"),
        Result(two.id, State.SENT, now, "sent", "", "p2"),
    )
    detail = await spool.show_message(kept)
    assert detail is not None
    [delivery] = detail.deliveries
    assert (delivery.state, delivery.attempts, delivery.platform_id) == (State.SENT, 1, "p1")
    assert [kind for _, kind, _ in delivery.events] == ["received", "sent"]
    assert await spool.show_message(dropped) is None
