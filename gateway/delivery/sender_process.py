"""With api.sender: process, the HTTP requests to the platform run in a child process.

The default is one process (gateway.app._make_sender), which needs less memory: the child has
its own interpreter, asyncio, httpx and aiohttp. This mode pays for one request a message at a
raised api.max_concurrency on a machine with a core to spare, not for batches, whose HTTP work
is small a message; bench/README.md has what each costs and gives.

Python runs one thread of Python at a time per process. In one process every request to the
platform (httpx over aiohttp: building, writing, reading, classifying) takes its CPU from the
SMTP sessions. `SenderProcess` is a `Sender` like `PulseClient`, and the worker uses it the
same way; it hands each request to a child (sender_child.py) that runs the real `PulseClient`
(or the dry-run one) and answers with its `Outcome`.

Only the HTTP work moves. The spool, the leases, retries, pacing and the concurrency cap stay in
the worker, so the spool keeps one writer and its group commits; the child holds no state
worth keeping. If it dies, every request it had becomes a retry (the platform may or may not
have seen it: at least once, as for any send whose reply is lost) and a new child is started.
A child that stops answering the parent's pings (stopped, hung) is killed and replaced the same
way, and /healthz says so meanwhile; each request carries deadlines the child honours, so one
that was stalled never sends late what the parent has already counted as a retry.
Messages on the socket pair are the frozen dataclasses of child_protocol.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from gateway.config.model import ApiConfig
from gateway.delivery.child_handle import Child
from gateway.delivery.child_protocol import Answer, Mask, Ping, Pong, Send, Start, Stop, read
from gateway.delivery.request import Outcome
from gateway.errors import SenderProcessError

log = logging.getLogger("smtp2pulse.sender")

STOP_MARGIN = 10.0  # past the drain's grace, before the child is killed
ANSWER_MARGIN = 10.0  # past api.timeout: a child that has not answered by then is stuck
# A request the child has not begun this long after it was handed over is not sent at all: the
# child was stalled, and a late start could only finish after the parent stopped waiting
# (START_WITHIN + api.timeout is inside api.timeout + ANSWER_MARGIN).
START_WITHIN = 5.0
ANSWER_SLACK = 1.0  # for the child's own "past its deadline" answer to arrive
PING_EVERY = 1.0
# A child whose event loop has not answered a ping for this long is stuck (SIGSTOP, a hang):
# it is killed and replaced, and what it held becomes a retry. A working child answers within
# milliseconds, whatever its requests are waiting for.
STUCK_AFTER = 10.0
RESTART_DELAYS = (0.2, 1.0, 2.0, 5.0, 10.0, 30.0)


class SenderProcess:
    """A `Sender` whose requests run in a child process."""

    def __init__(
        self,
        api: ApiConfig,
        *,
        mask_personal: Callable[[], bool] = lambda: False,
        log_level: str = "info",
        log_format: str = "plain",
        stuck_after: float = STUCK_AFTER,
    ) -> None:
        self.api = api
        self.stuck_after = stuck_after
        self.trouble: str | None = None  # why the child is being replaced (for /healthz)
        self.mask_personal = mask_personal
        self.log_level = log_level
        self.log_format = log_format
        self.restarts = 0
        self._child: Child | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._last_pong = 0.0
        self._waiting: dict[int, asyncio.Future[tuple[Outcome, ...]]] = {}
        self._ids = itertools.count()
        self._mask_sent = False
        self._stopping = False
        self._up = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.running

    @property
    def pid(self) -> int | None:
        return self._child.process.pid if self._child is not None else None

    async def start(self) -> None:
        await self._spawn()
        self._watcher = asyncio.create_task(self._watch(), name="sender-process-watch")
        self._pinger = asyncio.create_task(self._check_liveness(), name="sender-process-ping")

    async def send(self, request: Mapping[str, str], token: str) -> Outcome:
        (outcome,) = await self._ask((request,), token, batch=False)
        return outcome

    async def send_batch(self, requests: Sequence[Mapping[str, str]], token: str) -> list[Outcome]:
        return list(await self._ask(tuple(requests), token, batch=True))

    async def _ask(
        self, requests: tuple[Mapping[str, str], ...], token: str, *, batch: bool
    ) -> tuple[Outcome, ...]:
        if not self.ready() and not self._stopping:
            # Being restarted: usually back in a fraction of a second, cheaper than a retry.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._up.wait(), self.api.timeout)
        if not self.ready():
            return (Outcome("retry", detail="sender process is not running"),) * len(requests)
        assert self._child is not None and self._child.out is not None
        out = self._child.out
        mask = self.mask_personal()
        if mask != self._mask_sent:  # follows a reload, for the dry run's log lines
            out.send(Mask(mask))
            self._mask_sent = mask
        number = next(self._ids)
        answer: asyncio.Future[tuple[Outcome, ...]] = asyncio.get_running_loop().create_future()
        self._waiting[number] = answer
        now = time.monotonic()
        out.send(
            Send(
                number,
                tuple(dict(r) for r in requests),
                token,
                batch,
                start_by=now + START_WITHIN,
                answer_by=now + self.api.timeout + ANSWER_MARGIN,
            )
        )
        try:
            outcomes = await asyncio.wait_for(
                answer, self.api.timeout + ANSWER_MARGIN + ANSWER_SLACK
            )
        except TimeoutError:
            outcomes = (Outcome("retry", detail="sender process did not answer"),)
        finally:
            self._waiting.pop(number, None)
        # A child that is gone answers once for the whole request.
        return outcomes if len(outcomes) == len(requests) else outcomes[:1] * len(requests)

    def ready(self) -> bool:
        return self.running and self.trouble is None

    async def stop(self) -> None:
        """Stop the child once the worker has finished (or given up on) its sends."""
        self._stopping = True
        if self._child is None:
            return
        process = self._child.process
        if self._child.out is not None:
            self._child.out.send(Stop())
        try:
            await asyncio.wait_for(process.wait(), STOP_MARGIN)
        except TimeoutError:
            log.error("sender process %d did not stop in time; killing it", process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
        if self._watcher is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._watcher), STOP_MARGIN)
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self._child.close()

    async def _spawn(self) -> None:
        self._child = await Child.spawn()
        await self._child.connect()
        self._mask_sent = self.mask_personal()
        await self._child.handshake(
            Start(self.api, self.log_level, self.log_format, self._mask_sent)
        )
        self._last_pong = time.monotonic()
        self.trouble = None
        self._up.set()
        log.debug("sender process %d started", self._child.process.pid)

    async def _watch(self) -> None:
        while True:
            assert self._child is not None and self._child.reader is not None
            message = await read(self._child.reader)
            if message is not None:
                if isinstance(message, Answer):
                    answer = self._waiting.get(message.number)
                    if answer is not None and not answer.done():
                        answer.set_result(message.outcomes)
                elif isinstance(message, Pong):
                    self._last_pong = time.monotonic()
                continue
            code = await self._child.process.wait()
            self._up.clear()
            self._child.close()
            self._abandon(code)
            if self._stopping or not await self._respawn(code):
                return

    async def _check_liveness(self) -> None:
        """Ping the child every second; one silent for stuck_after is killed (SIGKILL works on
        a stopped process too), which _watch sees as an exit: its requests become retries and
        another child starts. Until that one is ready, /healthz says why."""
        while not self._stopping:
            asked = time.monotonic()
            await asyncio.sleep(PING_EVERY)
            now = time.monotonic()
            if now - asked > 2 * PING_EVERY:
                # This loop was held up itself: the child's answers may be waiting unread.
                self._last_pong = now
            child = self._child
            if not self.running or self.trouble is not None or child is None:
                continue
            process = child.process
            silent = now - self._last_pong
            if silent > self.stuck_after:
                self.trouble = (
                    f"sender process {process.pid} is stuck (no answer for"
                    f" {silent:.0f}s); replacing it"
                )
                log.error("%s", self.trouble)
                self._up.clear()
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                continue
            assert child.out is not None
            child.out.send(Ping())

    def _abandon(self, code: int) -> None:
        # The platform may have taken some of them: sent again, at least once.
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_result((Outcome("retry", detail=f"sender process exited ({code})"),))

    async def _respawn(self, code: int) -> bool:
        """Another child, after a pause that grows while starts fail; False if stopping."""
        for attempt in itertools.count():
            delay = RESTART_DELAYS[min(attempt, len(RESTART_DELAYS) - 1)]
            log.error("sender process exited (code %s); starting another in %.1fs", code, delay)
            await asyncio.sleep(delay)
            if self._stopping:
                break
            try:
                await self._spawn()
            except (SenderProcessError, OSError) as exc:
                log.error("%s", exc)
                continue
            self.restarts += 1
            return True
        return False


if __name__ == "__main__":
    # The child was started as this module before it had one of its own: a daemon still running
    # that code, whose package was upgraded under it, still gets a working child when it
    # restarts one.
    from gateway.delivery.sender_child import main

    sys.exit(main(sys.argv))
