"""Takes due deliveries from the spool, sends them, writes down what happened.

The worker sleeps until woken (a message was stored) or until the next retry is due, so an idle
gateway hands a new message over at once without polling the database.

Each free slot (api.max_concurrency counts requests) takes one request: a delivery alone to
send-message, or with api.batch_size > 1 up to that many that share token, type, sender and
charset, to send-list-messages (batch.py). Under load, a fill waits api.batch_wait before it
leases, so that each request carries what arrived meanwhile instead of one message a slot;
what is leased is sent at once or given back, never held.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from gateway.config.model import Config
from gateway.delivery.batch import group
from gateway.delivery.held import HeldWatch
from gateway.delivery.recording import Finished, Recorder
from gateway.delivery.request import Outcome, Outgoing, assemble
from gateway.delivery.retry import next_state
from gateway.errors import SpoolError
from gateway.spool.interface import SpoolInterface
from gateway.status.metrics import Metrics

log = logging.getLogger("smtp2pulse.worker")

MAX_IDLE_SLEEP = 10.0  # also picks up `queue retry` from another process
PURGE_EVERY = 3600.0
KEEP_FINISHED = 7 * 86400.0
# Beyond api.timeout: the sender process's answer (sender_process.ANSWER_MARGIN plus its
# ANSWER_SLACK, which this must exceed) and the record of the outcome.
LEASE_MARGIN = 15.0


class Pacer:
    """At most `rate` request starts per second, spaced evenly (api.max_rate)."""

    def __init__(self) -> None:
        self._next_slot = 0.0

    async def wait(self, rate: float) -> None:
        if rate <= 0:
            return
        now = time.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1.0 / rate
        if slot > now:
            await asyncio.sleep(slot - now)


class Sender(Protocol):
    async def send(self, request: Mapping[str, str], token: str) -> Outcome: ...

    async def send_batch(self, requests: Sequence[Mapping[str, str]], token: str) -> list[Outcome]:
        """One outcome per request, in order."""
        ...


class Worker:
    def __init__(
        self,
        spool: SpoolInterface,
        sender: Sender,
        config: Callable[[], Config],
        *,
        metrics: Metrics | None = None,
        on_bounce: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.spool = spool
        self.metrics = metrics or Metrics()
        # What each request came to, into the spool (or kept until the spool takes it).
        self.recorder = Recorder(spool, self.metrics, on_bounce or (lambda: None))
        self.sender = sender
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self._pacer = Pacer()
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._holding: set[int] = set()  # ids of the deliveries in flight here
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_purge = 0.0
        self.held = HeldWatch(spool, config, clock)  # limits: held deliveries, notices

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="delivery-worker")

    def wake(self) -> None:
        """Something was stored. With every slot busy this is a no-op: the slot that finishes
        first wakes the loop, which then leases whatever is due, this included — and a busy
        SMTP side is spared a turn of the delivery loop for every message it stores."""
        self.held.changed()
        if len(self._inflight) < self.config().api.max_concurrency:
            self._wake.set()

    @property
    def busy(self) -> int:
        return len(self._inflight)

    async def stop(self, grace: float) -> None:
        """Stop leasing, give in-flight sends up to `grace` seconds, then cancel them."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        deadline = time.monotonic() + grace
        if self._inflight:
            _done, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()  # its lease stays in the spool: sent again after restart
            if pending:
                log.warning("stopped with %d sends unfinished; they will be retried", len(pending))
                await asyncio.wait(pending)
        # Outcomes the spool could not take yet: what is left of the grace to write them.
        await self.recorder.stop(max(0.0, deadline - time.monotonic()))

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._fill()
                await self._sleep()
                await self._maybe_purge()
            except asyncio.CancelledError:
                raise
            except SpoolError as exc:
                # A shared database away: one line, not a traceback every few seconds.
                log.error("delivery loop: %s; retrying in 5s", exc)
                await asyncio.sleep(5)
            except Exception:
                # The spool may be briefly unwritable (disk full); keep the loop alive.
                log.exception("delivery loop error; retrying in 5s")
                await asyncio.sleep(5)

    async def _fill(self) -> None:
        # Cleared before looking, so a wake-up that arrives while we look is not lost.
        self._wake.clear()
        await self.held.tick()  # limits: held ones whose window has room become due
        config = self.config()
        api = config.api
        if api.max_concurrency - len(self._inflight) <= 0:
            return
        if self.recorder.kept:
            # Outcomes kept while the spool was away are written before anything is leased:
            # their leases may be running out.
            await self.recorder.flush()
        if api.batch_size > 1 and self._inflight and api.batch_wait > 0:
            # Under load, let the next batch fill rather than split the flow over every free
            # slot. Nothing is leased meanwhile: a crash now repeats nothing.
            await asyncio.sleep(api.batch_wait)
        free = api.max_concurrency - len(self._inflight)
        # Long enough for the send itself (one overall deadline, api.timeout), the wait for a
        # rate slot before it and recording its outcome after; not much longer, since with a
        # shared spool a gateway that died leaves its leases to the others only once they end.
        pacing = api.max_concurrency / api.max_rate if api.max_rate else 0.0
        lease = api.timeout + pacing + LEASE_MARGIN
        outgoing = []
        for delivery in await self.spool.lease(free * api.batch_size, lease):
            if delivery.id in self._holding or delivery.id in self.recorder.held:
                # Its lease ran out while this process still sends it (the sender's deadline
                # should prevent that), or while its outcome waits for the spool: the outcome
                # is recorded once, and it is not sent a second time. (Leased again here, it
                # stays ours meanwhile.)
                log.warning(
                    "queue_id=%s delivery %d is still in flight past its lease; not"
                    " sending it again",
                    delivery.queue_id,
                    delivery.id,
                )
                continue
            outgoing.append(assemble(delivery, config))
        batches = group(outgoing, api.batch_size)
        for batch in batches[:free]:
            ids = [item.delivery.id for item in batch]
            task = asyncio.create_task(self._deliver(batch), name=f"deliver-{ids[0]}")
            self._inflight.add(task)
            self._holding.update(ids)
            task.add_done_callback(functools.partial(self._finished, ids))
        # More batches than free slots (deliveries of several senders or tokens came due
        # together): the rest go back, due now, for the next slot that frees.
        unsent = [item.delivery.id for batch in batches[free:] for item in batch]
        if unsent:
            await self.spool.release(unsent)

    def _finished(self, delivery_ids: list[int], task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._holding.difference_update(delivery_ids)
        self._wake.set()

    async def _sleep(self) -> None:
        if self._wake.is_set():
            return
        timeout = MAX_IDLE_SLEEP
        if len(self._inflight) < self.config().api.max_concurrency:
            due = await self.spool.next_due()
            if due is not None:
                timeout = min(timeout, max(0.0, due - self.clock()))
        held = self.held.due()
        if held is not None:
            timeout = min(timeout, max(0.0, held - self.clock()))
        if timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _deliver(self, batch: list[Outgoing]) -> None:
        """One request, for one delivery (send-message) or a batch (send-list-messages)."""
        config = self.config()
        token = batch[0].token
        await self._pacer.wait(config.api.max_rate)
        started = time.monotonic()
        try:
            if len(batch) == 1:
                outcomes = [await self.sender.send(batch[0].fields, token)]
            else:
                outcomes = await self.sender.send_batch([item.fields for item in batch], token)
        except Exception as exc:  # a bug in a sender must not lose the deliveries
            log.exception("queue_id=%s send raised", batch[0].delivery.queue_id)
            outcomes = [Outcome("retry", detail=f"internal error: {type(exc).__name__}")] * len(
                batch
            )
        if len(outcomes) != len(batch):  # a sender's bug; the platform's is classify_batch's
            outcomes = [Outcome("retry", detail="internal error: outcomes do not match")] * len(
                batch
            )
        elapsed = time.monotonic() - started
        self.metrics.platform_answered(outcomes[0].config_error, outcomes[0].kind != "retry")
        self.metrics.platform_latency.observe(elapsed)
        self.metrics.batch_messages.observe(len(batch))
        now = self.clock()
        jitter = self.rng.uniform(0.9, 1.1)
        results = [
            next_state(item.delivery, outcome, config, now, jitter)
            for item, outcome in zip(batch, outcomes, strict=True)
        ]
        await self.recorder.record(Finished(tuple(batch), tuple(outcomes), tuple(results), elapsed))

    async def _maybe_purge(self) -> None:
        now = self.clock()
        if now - self._last_purge < PURGE_EVERY:
            return
        self._last_purge = now
        purged = await self.spool.purge(now - KEEP_FINISHED)
        if purged:
            log.info("purged %d finished messages older than 7 days", purged)
