"""The sender process itself: `python -m gateway.delivery.sender_child FD`, started by
SenderProcess (sender_process.py, through child_handle.py) with FD its end of a socket pair.

It runs the real PulseClient (or the dry-run one) and answers each Send with its outcomes. It
takes orders only from its parent: it ignores SIGTERM, SIGINT and SIGHUP (a terminal's Ctrl-C
reaches the whole process group; systemd's default stop signals every process of the unit),
stops when told to or when the parent is gone, and logs to the stderr it inherited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import sys
import time

from gateway import privacy
from gateway.delivery import child_protocol as wire
from gateway.delivery.request import Outcome
from gateway.logs import setup_logging

log = logging.getLogger("smtp2pulse.sender")

SENDER_NICENESS = 10  # added to the daemon's own (systemd's Nice=)


async def serve(fd: int) -> int:
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
    start = await wire.read(reader)
    if not isinstance(start, wire.Start):
        return 1
    api = start.api
    setup_logging(start.log_level, start.log_format)
    masking = [start.mask_personal]
    privacy.install(lambda: masking[0])
    # Here and not at the top: the client brings httpx, aiohttp and their imports.
    from gateway.delivery.client import PulseClient
    from gateway.delivery.dry_run import DryRunClient

    client = DryRunClient(api) if api.dry_run else PulseClient(api)
    out = wire.Batcher(writer)
    try:
        await client.start()
    except Exception as exc:
        writer.write(wire.frame(wire.Failed(str(exc) or type(exc).__name__)))
        await writer.drain()
        return 1
    writer.write(wire.frame(wire.Ready()))
    sends: set[asyncio.Task[None]] = set()

    async def send(order: wire.Send) -> None:
        # A Send pickled by a parent older than its deadlines (upgraded under a running
        # daemon) has none: unpickled here, the fields are not set at all.
        start_by = getattr(order, "start_by", math.inf)
        answer_by = getattr(order, "answer_by", math.inf)
        if time.monotonic() > start_by:
            # This process was stalled (stopped, starved) with the order waiting: the parent
            # has had no answer for it, and may already be sending it again elsewhere.
            log.warning("a request waited past its deadline in the sender process; not sent")
            outcomes: tuple[Outcome, ...] = (
                Outcome(
                    "retry", detail="not sent: held up in the sender process past its deadline"
                ),
            )
            out.send(wire.Answer(order.number, outcomes))
            return
        try:
            async with asyncio.timeout(
                None if math.isinf(answer_by) else answer_by - time.monotonic()
            ):
                if order.batch:
                    outcomes = tuple(await client.send_batch(order.requests, order.token))
                else:
                    outcomes = (await client.send(order.requests[0], order.token),)
        except TimeoutError:  # the parent has stopped waiting for it (and counts it a retry)
            outcomes = (Outcome("retry", detail="sender process: past its answer deadline"),)
        except Exception as exc:  # a bug must cost a retry, not the child
            log.exception("send raised")
            outcomes = (Outcome("retry", detail=f"internal error: {type(exc).__name__}"),)
        out.send(wire.Answer(order.number, outcomes))

    while True:
        message = await wire.read(reader)
        if message is None:
            log.warning("the gateway process is gone; stopping")
            break
        if isinstance(message, wire.Send):
            task = asyncio.create_task(send(message))
            sends.add(task)
            task.add_done_callback(sends.discard)
        elif isinstance(message, wire.Ping):
            out.send(wire.Pong())
        elif isinstance(message, wire.Mask):
            masking[0] = message.on
        elif isinstance(message, wire.Stop):
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
    # the backlog; with a core to spare this changes nothing (bench/README.md has what it
    # measured).
    try:
        os.nice(SENDER_NICENESS)
    except OSError as exc:  # a seccomp filter without setpriority: slower bursts, nothing worse
        print(f"smtp2pulse sender process: cannot lower its priority: {exc}", file=sys.stderr)
    # asyncio's own loop: uvloop costs this process memory and measured no gain here (the
    # child's CPU per request the same within the noise); the SMTP side keeps it.
    with asyncio.Runner() as runner:
        return runner.run(serve(int(argv[1])))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
