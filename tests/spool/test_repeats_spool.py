"""spool/repeats.py on both spools: copies of one key in one group commit are decided in the
commit's order; a retransmission key is forgotten after a day (by the purge, or as stale), a
repeat once its window is over."""

from __future__ import annotations

import asyncio

from gateway.spool.rows import Fingerprint, IncomingMessage, NewDelivery
from gateway.spool.states import State
from tests.spool.conftest import OpenSpool, fetch

DAY = 86400.0


def message(retransmission: str | None, text: str | None, window: float = 600.0) -> IncomingMessage:
    delivery = NewDelivery(
        "79001234567@sms.local",
        {"type": "sms", "sent_to": "79001234567", "sent_text": "UPS on battery"},
        fingerprint=Fingerprint(retransmission, text, window),
    )
    return IncomingMessage("ups@corp.test", "127.0.0.1", "ups", b"x", (delivery,))


async def test_copies_in_one_commit_are_decided_in_its_order(open_spool: OpenSpool) -> None:
    spool = await open_spool(clock=lambda: 1000.0)
    commits = spool.commits
    # Accepted together: one group commit.
    answers = await asyncio.gather(
        spool.accept(message("k1", "t1")),
        spool.accept(message("k1", "t1")),
        spool.accept(message("k2", "t1")),
        spool.accept(message("k3", "t1")),
    )
    assert spool.commits == commits + 1
    first, again, repeat, repeat2 = answers
    assert first.stored and not first.retransmitted and not first.suppressed
    assert str(again) == first and not again.stored
    assert again.retransmitted == (("79001234567@sms.local", first),)
    for answer in (repeat, repeat2):
        assert answer.stored and answer != first
        [(_recipient, why)] = answer.suppressed
        assert (why.reason, why.detail) == ("repeat", f"of {first}: the same text within 10m")
        detail = await spool.show_message(answer)
        assert detail is not None and detail.deliveries[0].state == State.SUPPRESSED
    assert len(await fetch(spool, "SELECT id FROM messages")) == 3


async def test_a_retransmission_key_lasts_a_day(open_spool: OpenSpool) -> None:
    now = [1000.0]
    spool = await open_spool(clock=lambda: now[0])
    first = await spool.accept(message("k1", None))
    now[0] += DAY - 1
    assert not (await spool.accept(message("k1", None))).stored
    now[0] += 2  # a day and a second after the first: stale, though not yet purged
    later = await spool.accept(message("k1", None))
    assert later.stored and later != first
    now[0] += DAY + 1
    await spool.purge(0.0)
    assert await fetch(spool, "SELECT key FROM retransmissions") == []


async def test_a_repeat_is_forgotten_once_its_window_is_over(open_spool: OpenSpool) -> None:
    now = [1000.0]
    spool = await open_spool(clock=lambda: now[0])
    await spool.accept(message(None, "t1", 60.0))
    now[0] += 59
    assert (await spool.accept(message(None, "t1", 60.0))).suppressed
    now[0] += 60  # a whole window after the repeat
    assert not (await spool.accept(message(None, "t1", 60.0))).suppressed
    assert await spool.purge(0.0) == 0
    assert len(await fetch(spool, "SELECT key FROM repeats")) == 1
    now[0] += 61
    await spool.purge(0.0)
    assert await fetch(spool, "SELECT key FROM repeats") == []
