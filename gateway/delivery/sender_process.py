"""With api.sender: process, the HTTP requests to the platform run in a child process.

The default is one process (gateway.app._make_sender): about 26 MB less memory, which the
child's own interpreter, asyncio, httpx and aiohttp take, for about 13% fewer accepts a
second on 2 cores (bench/). This mode is for a busy machine with a core to spare.

Python runs one thread of Python at a time per process. In one process every request to the
platform (httpx over aiohttp: building, writing, reading, classifying) takes its CPU from the
SMTP sessions: about a fifth of a busy gateway's main thread. `SenderProcess` is a `Sender` like
`PulseClient`, and the worker uses it the same way; it hands each request to a child that runs
the real `PulseClient` (or the dry-run one) and answers with its `Outcome`.

Only the HTTP work moves. The spool, the leases, retries, pacing and the concurrency cap stay in
the worker, so the spool keeps one writer and its group commits; the child holds no state
worth keeping. If it dies, every request it had becomes a retry (the platform may or may not
have seen it: at least once, as for any send whose reply is lost) and a new child is started.

Messages on the socket pair are the frozen dataclasses of child_protocol.py. The child takes
orders only from its parent: it ignores SIGTERM, SIGINT and SIGHUP (a terminal's Ctrl-C reaches
the whole process group; systemd's default stop signals every process of the unit), stops when
told to or when the parent is gone, and logs to the stderr it inherited.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence

from gateway import privacy
from gateway.config.model import ApiConfig
from gateway.delivery.child_protocol import (
    Answer,
    Failed,
    Mask,
    Message,
    Ready,
    Send,
    Start,
    Stop,
    frame,
    read,
)
from gateway.delivery.request import Outcome
from gateway.errors import SenderProcessError
from gateway.logs import setup_logging

log = logging.getLogger("smtp2pulse.sender")

START_TIMEOUT = 30.0
STOP_MARGIN = 10.0        # past the drain's grace, before the child is killed
ANSWER_MARGIN = 10.0      # past api.timeout: a child that has not answered by then is stuck
RESTART_DELAYS = (0.2, 1.0, 2.0, 5.0, 10.0, 30.0)
SENDER_NICENESS = 10      # added to the daemon's own (systemd's Nice=)


class _Batcher:
    """Frames written once per event-loop turn: one write for every request made in it."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._frames: list[bytes] = []

    def send(self, message: Message) -> None:
        if not self._frames:
            asyncio.get_running_loop().call_soon(self.flush)
        self._frames.append(frame(message))

    def flush(self) -> None:
        frames, self._frames = self._frames, []
        if frames and not self.writer.is_closing():
            self.writer.write(b"".join(frames))


class SenderProcess:
    """A `Sender` whose requests run in a child process."""

    def __init__(self, api: ApiConfig, *, mask_personal: Callable[[], bool] = lambda: False,
                 log_level: str = "info", log_format: str = "plain") -> None:
        self.api = api
        self.mask_personal = mask_personal
        self.log_level = log_level
        self.log_format = log_format
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._out: _Batcher | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[tuple[Outcome, ...]]] = {}
        self._ids = itertools.count()
        self._mask_sent = False
        self._stopping = False
        self._up = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None \
            and self._out is not None and not self._out.writer.is_closing()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        await self._spawn()
        self._watcher = asyncio.create_task(self._watch(), name="sender-process-watch")

    async def send(self, request: Mapping[str, str], token: str) -> Outcome:
        (outcome,) = await self._ask((request,), token, batch=False)
        return outcome

    async def send_batch(self, requests: Sequence[Mapping[str, str]], token: str
                         ) -> list[Outcome]:
        return list(await self._ask(tuple(requests), token, batch=True))

    async def _ask(self, requests: tuple[Mapping[str, str], ...], token: str, *, batch: bool
                   ) -> tuple[Outcome, ...]:
        if not self.running and not self._stopping:
            # Being restarted: usually back in a fraction of a second, cheaper than a retry.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._up.wait(), self.api.timeout)
        if not self.running:
            return (Outcome("retry", detail="sender process is not running"),) * len(requests)
        assert self._out is not None
        mask = self.mask_personal()
        if mask != self._mask_sent:          # follows a reload, for the dry run's log lines
            self._out.send(Mask(mask))
            self._mask_sent = mask
        number = next(self._ids)
        answer: asyncio.Future[tuple[Outcome, ...]] = asyncio.get_running_loop().create_future()
        self._waiting[number] = answer
        self._out.send(Send(number, tuple(dict(r) for r in requests), token, batch))
        try:
            outcomes = await asyncio.wait_for(answer, self.api.timeout + ANSWER_MARGIN)
        except TimeoutError:
            outcomes = (Outcome("retry", detail="sender process did not answer"),)
        finally:
            self._waiting.pop(number, None)
        # A child that is gone answers once for the whole request.
        return outcomes if len(outcomes) == len(requests) else outcomes[:1] * len(requests)

    def ready(self) -> bool:
        return self.running

    async def stop(self) -> None:
        """Stop the child once the worker has finished (or given up on) its sends."""
        self._stopping = True
        process = self._process
        if process is None:
            return
        if self._out is not None:
            self._out.send(Stop())
        try:
            await asyncio.wait_for(process.wait(), STOP_MARGIN)
        except TimeoutError:
            log.error("sender process %d did not stop in time; killing it", process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        if self._watcher is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._watcher), STOP_MARGIN)
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self._close()

    async def _spawn(self) -> None:
        parent_end, child_end = socket.socketpair()
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.delivery.sender_process", str(child_end.fileno()),
                pass_fds=(child_end.fileno(),), stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        self._reader, writer = await asyncio.open_connection(sock=parent_end)
        self._out = _Batcher(writer)
        self._mask_sent = self.mask_personal()
        writer.write(frame(Start(self.api, self.log_level, self.log_format, self._mask_sent)))
        reply: Message | None
        try:
            reply = await asyncio.wait_for(read(self._reader), START_TIMEOUT)
        except TimeoutError:
            reply = Failed(f"not ready within {START_TIMEOUT:.0f}s")
        if not isinstance(reply, Ready):
            reason = reply.reason if isinstance(reply, Failed) else "it exited"
            await self._reap()
            raise SenderProcessError(f"sender process did not start: {reason}")
        self._up.set()
        log.debug("sender process %d started", self._process.pid)

    async def _reap(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        self._close()

    def _close(self) -> None:
        if self._out is not None:
            self._out.writer.close()
            self._out = None

    async def _watch(self) -> None:
        while True:
            assert self._reader is not None
            message = await read(self._reader)
            if message is not None:
                if isinstance(message, Answer):
                    answer = self._waiting.get(message.number)
                    if answer is not None and not answer.done():
                        answer.set_result(message.outcomes)
                continue
            assert self._process is not None
            code = await self._process.wait()
            self._up.clear()
            self._close()
            self._abandon(code)
            if self._stopping or not await self._respawn(code):
                return

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


# --- the child ---------------------------------------------------------------------------------

async def _child(fd: int) -> int:
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
    start = await read(reader)
    if not isinstance(start, Start):
        return 1
    api = start.api
    setup_logging(start.log_level, start.log_format)
    masking = [start.mask_personal]
    privacy.install(lambda: masking[0])
    # Here and not at the top: the parent imports this module and has no use for httpx.
    from gateway.delivery.client import DryRunClient, PulseClient
    client = DryRunClient(api) if api.dry_run else PulseClient(api)
    out = _Batcher(writer)
    try:
        await client.start()
    except Exception as exc:
        writer.write(frame(Failed(str(exc) or type(exc).__name__)))
        await writer.drain()
        return 1
    writer.write(frame(Ready()))
    sends: set[asyncio.Task[None]] = set()

    async def send(order: Send) -> None:
        try:
            if order.batch:
                outcomes = tuple(await client.send_batch(order.requests, order.token))
            else:
                outcomes = (await client.send(order.requests[0], order.token),)
        except Exception as exc:   # a bug must cost a retry, not the child
            log.exception("send raised")
            outcomes = (Outcome("retry", detail=f"internal error: {type(exc).__name__}"),)
        out.send(Answer(order.number, outcomes))

    while True:
        message = await read(reader)
        if message is None:
            log.warning("the gateway process is gone; stopping")
            break
        if isinstance(message, Send):
            task = asyncio.create_task(send(message))
            sends.add(task)
            task.add_done_callback(sends.discard)
        elif isinstance(message, Mask):
            masking[0] = message.on
        elif isinstance(message, Stop):
            break
    # The worker has had its grace for these and stopped waiting (or is gone): their leases
    # stay in the spool, and they are sent again after the restart.
    for task in sends:
        task.cancel()
    if sends:
        await asyncio.wait(sends)
    await client.stop()
    out.flush()
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()
    return 0


def main(argv: list[str]) -> int:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    # Below the SMTP side in the CPU queue: a client is waiting for its 250, the platform for
    # nothing. Under a burst on a small machine the acceptor runs first and the spool holds
    # the backlog; with a core to spare this changes nothing. (bench/: +20% accepted a second
    # on 2 cores, end-to-end rate unchanged.)
    try:
        os.nice(SENDER_NICENESS)
    except OSError as exc:   # a seccomp filter without setpriority: slower bursts, nothing worse
        print(f"smtp2pulse sender process: cannot lower its priority: {exc}", file=sys.stderr)
    # asyncio's own loop: uvloop costs this process 10 MB of RSS and measured no gain here
    # (bench/, child CPU per request the same within noise); the SMTP side keeps it.
    with asyncio.Runner() as runner:
        return runner.run(_child(int(argv[1])))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
