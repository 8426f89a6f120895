"""Writes down what each request came to: the spool's record, the metrics, the log lines.

A request's outcomes are the only word of what the platform has: dropped, a sent message's lease
runs out and it is sent again (a duplicate SMS). So when the spool cannot take them (PostgreSQL
restarting, an SQLite file locked or failing) they are kept here and written as soon as it can,
retried with a short backoff, and their deliveries stay held by this process meanwhile: the
worker does not lease them to itself again. What that guarantees:

- in this process, a delivery is never sent again while its outcome waits to be written;
- with SQLite (one gateway a spool) that is every sender there is;
- with PostgreSQL another gateway could lease a row whose lease ran out while the database was
  away (a lease is api.timeout + 15 s from its start). Nothing can extend a lease while the
  database is unreachable; once it is back, this writes first (the worker flushes before it
  leases, and retries every RETRY_DELAYS[-1] s at most, where a gateway's delivery loop waits
  5 s after a spool error), so only an outage longer than the lease's rest, and another gateway
  leasing first in the moment the database returns, can still send one twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from gateway.delivery.request import Outcome, Outgoing
from gateway.errors import ShuttingDown, SpoolError
from gateway.message.cost import request_segments
from gateway.spool.interface import SpoolInterface
from gateway.spool.rows import Result
from gateway.status.metrics import Metrics

log = logging.getLogger("smtp2pulse.worker")

RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0)  # the last repeats: short, a lease is running out
STILL_KEPT_EVERY = 60.0  # seconds between "still not recorded" lines


@dataclass(frozen=True, slots=True)
class Finished:
    """One request: its deliveries, what the platform said of each, what the spool records."""

    batch: tuple[Outgoing, ...]
    outcomes: tuple[Outcome, ...]
    results: tuple[Result, ...]
    elapsed: float


class Recorder:
    def __init__(
        self, spool: SpoolInterface, metrics: Metrics, on_bounce: Callable[[], None]
    ) -> None:
        self.spool = spool
        self.metrics = metrics
        self.on_bounce = on_bounce
        self._kept: list[Finished] = []
        self._held: set[int] = set()
        self._retry: asyncio.Task[None] | None = None
        self._said_at = 0.0
        self._flushing = asyncio.Lock()  # the retry loop, the worker and stop() all flush

    @property
    def held(self) -> set[int]:
        """The ids of deliveries whose outcome is kept here, not yet in the spool."""
        return self._held

    @property
    def kept(self) -> int:
        return len(self._kept)

    async def record(self, finished: Finished) -> None:
        """Into the spool now, or kept and written as soon as the spool takes it."""
        if await self._write(finished):
            return
        self._keep(finished)
        if self._retry is None or self._retry.done():
            self._retry = asyncio.create_task(self._retry_loop(), name="record-outcomes")

    async def flush(self) -> bool:
        """Write what is kept; True once nothing is left.

        All at once, so that they share a group commit, whose one-by-one fallback keeps an
        outcome the spool refuses for good (a row it cannot store) from holding up the rest:
        that one stays kept, its deliveries held here, and is tried again."""
        async with self._flushing:
            kept = list(self._kept)
            if not kept:
                return True
            written = await asyncio.gather(*(self._write(f, quiet=True) for f in kept))
            # Only record() adds meanwhile, at the end.
            self._kept = [
                f for f, done in zip(kept, written, strict=True) if not done
            ] + self._kept[len(kept) :]
            for finished, done in zip(kept, written, strict=True):
                if done:
                    self._held.difference_update(r.delivery_id for r in finished.results)
                    log.warning(
                        "queue_id=%s recorded %d outcomes kept while the spool was away",
                        finished.batch[0].delivery.queue_id,
                        len(finished.results),
                    )
            return not self._kept

    async def stop(self, within: float) -> None:
        """Keep trying for `within` seconds (the drain's grace), then give up on the rest."""
        deadline = time.monotonic() + within
        for delay in itertools.chain(RETRY_DELAYS, itertools.repeat(RETRY_DELAYS[-1])):
            try:
                # Bounded: a locked SQLite file holds a write for its busy timeout.
                if await asyncio.wait_for(self.flush(), max(0.0, deadline - time.monotonic())):
                    break
            except TimeoutError:
                break
            if time.monotonic() + delay > deadline:
                break
            await asyncio.sleep(delay)
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        if self._kept:
            sent = [r for f in self._kept for r in f.results if r.event == "sent"]
            log.error(
                "stopped with %d outcomes not recorded; %d of them sent, which will be"
                " sent again once their lease runs out: %s",
                sum(len(f.results) for f in self._kept),
                len(sent),
                " ".join(f.batch[0].delivery.queue_id for f in self._kept),
            )

    def _keep(self, finished: Finished) -> None:
        self._kept.append(finished)
        self._held.update(r.delivery_id for r in finished.results)

    async def _retry_loop(self) -> None:
        for delay in itertools.chain(RETRY_DELAYS, itertools.repeat(RETRY_DELAYS[-1])):
            await asyncio.sleep(delay)
            if await self.flush():
                return
            if time.monotonic() - self._said_at >= STILL_KEPT_EVERY:
                self._said_at = time.monotonic()
                log.error(
                    "%d outcomes still not recorded (their deliveries are held here); trying again",
                    sum(len(f.results) for f in self._kept),
                )

    async def _write(self, finished: Finished, *, quiet: bool = False) -> bool:
        try:
            await self.spool.record(*finished.results)
        except (SpoolError, ShuttingDown) as exc:
            if not quiet:
                self._said_at = time.monotonic()
                log.error(
                    "queue_id=%s could not record %d outcomes: %s; kept, to be recorded"
                    " when the spool is back",
                    finished.batch[0].delivery.queue_id,
                    len(finished.results),
                    exc,
                )
            return False
        self._account(finished)
        self._log(finished)
        return True

    def _account(self, finished: Finished) -> None:
        """A request's metrics, counted once per kind rather than once per message."""
        results = finished.results
        for event, count in Counter(result.event for result in results).items():
            self.metrics.deliveries.labels(event).inc(count)
        parts: Counter[str] = Counter()
        for item, result in zip(finished.batch, results, strict=True):
            if result.event == "sent" and (sms := request_segments(item.delivery.request)):
                parts[item.delivery.recipient.rpartition("@")[2].lower()] += sms.parts
        for domain, count in parts.items():
            self.metrics.sms_parts.labels(domain).inc(count)
        if any(result.bounce for result in results):
            self.on_bounce()

    def _log(self, finished: Finished) -> None:
        """A line per delivery, except that a batch's sent ones share one line: a line per
        message was the costliest part of delivering a batch. Each queue id is still in the
        log, and `queue show` has the whole history."""
        batch = finished.batch
        ms = finished.elapsed * 1000
        sent = []
        for item, outcome, result in zip(batch, finished.outcomes, finished.results, strict=True):
            delivery = item.delivery
            to = delivery.request.get("sent_to", delivery.recipient)
            if len(batch) > 1 and result.event == "sent":
                sent.append(f"{delivery.queue_id}({to}:{outcome.platform_id or '-'})")
                continue
            log.info(
                "queue_id=%s to=%s attempt=%d outcome=%s %s(%.0f ms%s)",
                delivery.queue_id,
                to,
                delivery.attempts + 1,
                result.event,
                f"platform_id={outcome.platform_id} "
                if outcome.platform_id
                else f"reason={result.detail!r} ",
                ms,
                f", batch of {len(batch)}" if len(batch) > 1 else "",
                extra={"queue_id": delivery.queue_id},
            )
        if sent:
            log.info(
                "batch of %d (%.0f ms): %d sent: %s", len(batch), ms, len(sent), " ".join(sent)
            )
