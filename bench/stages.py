"""What each stage of an accept costs in the running gateway: the same load, stages taken out.

    python bench/stages.py                    # 5 rounds, scenario e's load (batch_size 100)
    python bench/stages.py --rounds 7 --batch-size 1

bench/accept_path.py times the end-of-DATA code alone, in a warm loop. In the daemon the same
code shares the CPU caches and the GIL with aiosmtpd, the spool's writer thread and the delivery
side, and costs more than that. This bench measures it there: each round runs Sink and then the
gateway several times, each time with one stage of the accept replaced by a stand-in (the
patches are applied by this script to a gateway it starts itself; nothing of it is in gateway/):

  full        the gateway as it is
  process     the gateway as it is, with api.sender: process (the requests in a child process)
  plain-log   each log line written as it is made, not once per loop turn
  no-log      the "accepted" log line not written
  no-prepare  prepare() run once, its result reused for every later message
  no-delivery messages stored, never delivered (the delivery worker is not started)
  no-store    no spool: DATA answers 250 without storing (so nothing is delivered either)
  front       DATA answers 250 as soon as the data is read: aiosmtpd and our session only
  loop-pack   the requests packed for the spool on the event loop, not on its writer thread
  writer-process  the spool's group commits run in a process of their own (writer_child.py)
  loop-commit the spool's group commits run on the event loop's thread: no writer thread

Printed: msgs/s and server CPU µs per message (user + system, all threads) for each, as medians
over the rounds, and each one's ratio to `full` paired per round. `full` minus a variant is what
that stage costs in place. Only a measurement: the variants accept mail they would lose.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from loadgen import LoadSpec
from run import START_TIMEOUT, Child, PlatformClient, measured_load, start_helper, write_config

BENCH = Path(__file__).resolve().parent
VARIANTS = ("full", "process", "plain-log", "no-log", "no-prepare", "no-delivery", "no-store",
            "front", "loop-pack", "writer-process", "loop-commit")


# --- the patched gateway (this script run with --serve) ------------------------------------

def patch(variant: str) -> None:
    from gateway.smtp import handler, replies

    if variant == "process":
        os.environ["SMTP2PULSE_SENDER"] = "process"
    elif variant == "plain-log":
        import logging

        import gateway.logs
        gateway.logs.TurnBufferedHandler = logging.StreamHandler   # type: ignore[misc]
    elif variant == "no-log":
        handler.log = _Silent(handler.log)   # type: ignore[assignment]
    elif variant == "no-prepare":
        real = handler.prepare
        first: list[Any] = []

        def reused(*args: Any, **kwargs: Any) -> Any:
            if not first:
                first.append(real(*args, **kwargs))
            return first[0]
        handler.prepare = reused   # type: ignore[assignment]
    elif variant == "no-delivery":
        async def idle(self: Any) -> None:
            pass
        from gateway.delivery.worker import Worker
        Worker.start = idle   # type: ignore[method-assign]
    elif variant == "no-store":
        async def nothing(self: Any, message: Any) -> str:
            return "NOSTORE0000"

        def accept(self: Any, message: Any) -> Any:
            return asyncio.ensure_future(nothing(self, message))
        import gateway.spool.store as store
        store.Spool.accept = accept   # type: ignore[method-assign]
    elif variant == "front":
        async def handle_data(self: Any, server: Any, session: Any, envelope: Any) -> Any:
            return replies.QUEUED.format(queue_id="FRONT000000")
        handler.Handler.handle_DATA = handle_data   # type: ignore[method-assign]
    elif variant == "loop-pack":
        from gateway.spool import deliveries, sql, store
        from gateway.spool.packing import pack_requests

        def insert_packed(conn: Any, items: list[Any]) -> list[str]:
            """deliveries.insert of requests packed before they reached the writer thread."""
            messages = [(queue_id, now, m.mail_from, m.peer, m.helo, m.auth_user, len(m.raw),
                         m.raw, texts) for queue_id, now, m, texts, _ in items]
            rows = [(queue_id, d.recipient, request, now, now)
                    for queue_id, now, m, _, requests in items
                    for d, request in zip(m.deliveries, requests, strict=True)]
            deliveries._insert_rows(conn, sql.insert_messages, messages)
            deliveries._insert_rows(conn, sql.insert_deliveries, rows)
            return [item[0] for item in items]

        def accept_packing(self: Any, message: Any) -> Any:
            now = self.clock()
            queue_id = store.new_queue_id(now)
            texts, requests = pack_requests([d.request for d in message.deliveries])
            return self._writer.submit_together(insert_packed,
                                                (queue_id, now, message, texts, requests))
        store.Spool.accept = accept_packing   # type: ignore[method-assign]
    elif variant == "writer-process":
        _commits_in_a_child()
    elif variant == "loop-commit":
        _commits_on_the_loop()
    elif variant != "full":
        raise SystemExit(f"unknown variant {variant}")
    print(f"bench/stages.py: variant {variant}", file=sys.stderr, flush=True)


def _commits_in_a_child() -> None:
    """Writer._commit_batch through bench/writer_child.py (see its docstring)."""
    import subprocess
    import threading

    import writer_child

    from gateway.errors import SpoolError
    from gateway.spool import writer

    children: dict[int, subprocess.Popen[bytes]] = {}
    lock = threading.Lock()

    def commit_batch(self: Any, conn: Any, batch: list[Any]) -> None:
        with lock:
            child = children.get(id(self))
            if child is None:
                child = children[id(self)] = subprocess.Popen(
                    [sys.executable, str(BENCH / "writer_child.py"), str(self.path)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.stdin is not None and child.stdout is not None
        writer_child.send(child.stdin, [(job.fn, job.run_all, job.item) for job in batch])
        reply = writer_child.receive(child.stdout)
        if reply is None or reply[0] != "ok":
            error = SpoolError(f"writer process: {reply}")
            writer._settle_all([(job, None, error) for job in batch])
            return
        self.commits += 1
        writer._settle_all([(job, result, None)
                            for job, result in zip(batch, reply[1], strict=True)])
    writer.Writer._commit_batch = commit_batch   # type: ignore[method-assign]


def _commits_on_the_loop() -> None:
    """Writer's group commits run by the event loop itself, at the end of the turn in which
    their jobs came: no thread hand-off and no GIL to wait for, but the loop serves nobody
    while SQLite runs (and fsyncs)."""
    import threading

    from gateway.spool import schema, writer

    class LoopJobs:
        def __init__(self, owner: Any, conn: Any, loop: asyncio.AbstractEventLoop) -> None:
            self.owner, self.conn, self.loop = owner, conn, loop
            self.pending: list[Any] = []

        def put(self, job: Any) -> None:
            if not self.pending:
                self.loop.call_soon(self.flush)
            self.pending.append(job)

        def flush(self) -> None:
            batch, self.pending = self.pending, []
            if batch:
                self.owner._commit_batch(self.conn, batch)

    async def start(self: Any) -> None:
        self._jobs = LoopJobs(self, schema.open_writer(self.path), asyncio.get_running_loop())
        self._thread = threading.current_thread()   # what `running` looks at

    async def stop(self: Any) -> bool:
        if self._thread is None or self.closed:
            return False
        self.closed = True
        self._jobs.flush()
        self._jobs.conn.close()
        return True
    writer.Writer.start = start   # type: ignore[method-assign]
    writer.Writer.stop = stop   # type: ignore[method-assign]


class _Silent:
    """The handler's logger with its info() a no-op; the rest as it was."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def info(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def serve(variant: str, config: str) -> int:
    patch(variant)
    from gateway.cli import main
    return main(["serve", "-c", config])


# Variants that deliver nothing; every other one must have delivered each accepted message.
UNDELIVERED = ("no-delivery", "no-store", "front")
DELIVERY_PATIENCE = 60.0


# --- the comparison ------------------------------------------------------------------------

async def start_variant(variant: str, workdir: Path, platform_port: int,
                        args: argparse.Namespace) -> tuple[Child, int]:
    config = write_config(workdir, platform_port, args, None, args.batch_size)
    log_path = workdir / f"gateway-{variant}.log"
    child = await Child.spawn_logged("gateway", [sys.executable, str(BENCH / "stages.py"),
                                                 "--serve", variant, "-c", str(config)], log_path)
    for _ in range(int(START_TIMEOUT / 0.05)):
        text = log_path.read_text(errors="replace")
        if "SMTP listening on 127.0.0.1:" in text:
            return child, int(text.split("SMTP listening on 127.0.0.1:")[1].split()[0])
        if child.process.returncode is not None:
            break
        await asyncio.sleep(0.05)
    await child.stop()
    raise RuntimeError(f"{variant} did not start:\n" + log_path.read_text()[-2000:])


def check_log(variant: str, log: str, accepted: int) -> None:
    """The variant ran as named: its log says so, and has the accept lines it should have."""
    if f"bench/stages.py: variant {variant}" not in log:
        raise RuntimeError(f"{variant}: the gateway did not run the patched code")
    lines = log.count(" accepted from=<")
    wanted = 0 if variant in ("no-log", "front") else accepted
    if lines != wanted:
        raise RuntimeError(f"{variant}: {lines} 'accepted' log lines, expected {wanted}")


def spec(port: int, args: argparse.Namespace, run_id: str) -> LoadSpec:
    return LoadSpec("127.0.0.1", port, messages=args.messages, connections=args.connections,
                    run_id=run_id, deadline=600)


async def one(variant: str, round_no: int, args: argparse.Namespace, root: Path
              ) -> tuple[float, float]:
    """(msgs/s, server CPU µs a message) of one run."""
    if variant == "sink":
        child, port = await start_helper("sink.py", "--max-seconds", 3600)
        platform = None
    else:
        platform, platform_port = await start_helper("fakeplatform.py", "--latency",
                                                     args.latency, "--max-seconds", 3600)
        workdir = Path(tempfile.mkdtemp(prefix=f"{variant}-{round_no}-", dir=root))
        child, port = await start_variant(variant, workdir, platform_port, args)
    try:
        load, _overflows, cpu = await measured_load(spec(port, args, f"{variant}{round_no}"),
                                                    child.pid)
        if platform is not None and variant not in UNDELIVERED:
            # A patch that broke delivery would make its variant look fast: it must deliver.
            client = PlatformClient(platform_port)
            await client.wait_for(len(load.accepted), DELIVERY_PATIENCE)
            delivered = int((await client.stats())["unique"])
            if delivered < len(load.accepted):
                raise RuntimeError(f"{variant}: {delivered} of {len(load.accepted)} accepted"
                                   " messages delivered")
    finally:
        await child.stop()
        if platform is not None:
            await platform.stop()
    accepted = len(load.accepted)
    if accepted < args.messages:
        print(f"  {variant}: only {accepted} of {args.messages} accepted", file=sys.stderr)
    if variant != "sink":
        check_log(variant, (workdir / f"gateway-{variant}.log").read_text(errors="replace"),
                  accepted)
    return load.rate, cpu.server / max(accepted, 1) * 1e6


async def compare(args: argparse.Namespace) -> None:
    runs = ["sink", "full", *(v for v in VARIANTS if v != "full" and v in args.only)]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory(prefix="smtp2pulse-stages-") as tmp:
        try:
            for round_no in range(1, args.rounds + 1):
                # Each round in a new order, so that drift does not favour one position.
                order = runs[round_no % len(runs):] + runs[:round_no % len(runs)]
                for name in order:
                    print(f"round {round_no}/{args.rounds}: {name}", file=sys.stderr)
                    results[name].append(await one(name, round_no, args, Path(tmp)))
        finally:
            await Child.stop_all()
    full = results["full"]
    print(f"\nstages: {args.rounds} rounds of {args.messages} messages × "
          f"{args.connections} connections, api.batch_size {args.batch_size}, platform at "
          f"{args.latency * 1000:.0f} ms; medians, ratios to full paired per round")
    print(f"{'run':<12}{'msgs/s':>8}{'CPU µs/msg':>12}{'rate/full':>11}{'CPU/full':>10}"
          f"{'full-this µs':>14}")
    for name in runs:
        rows = results[name]
        rate = statistics.median(r for r, _ in rows)
        cpu = statistics.median(c for _, c in rows)
        rate_ratio = statistics.median(r / f for (r, _), (f, _) in zip(rows, full, strict=True))
        cpu_ratio = statistics.median(c / f for (_, c), (_, f) in zip(rows, full, strict=True))
        saved = statistics.median(f - c for (_, c), (_, f) in zip(rows, full, strict=True))
        print(f"{name:<12}{rate:>8.0f}{cpu:>12.0f}{rate_ratio:>11.2f}{cpu_ratio:>10.2f}"
              f"{saved:>14.0f}")
    print("per round (msgs/s, CPU µs/msg): " + "; ".join(
        f"{name} " + ", ".join(f"{r:.0f}/{c:.0f}" for r, c in results[name]) for name in runs))


def load_options(parser: argparse.ArgumentParser) -> None:
    """The rounds and e's load, for this script and bench/reuseport.py."""
    add = parser.add_argument
    add("--rounds", type=int, default=5)
    add("--messages", type=int, default=5000)
    add("--connections", type=int, default=20)
    add("--latency", type=float, default=0.05, help="the fake platform's reply delay, seconds")
    add("--batch-size", type=int, default=100)
    add("-c", dest="config", help=argparse.SUPPRESS)


def with_run_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """What write_config reads besides load_options' keys (bench/run.py's defaults)."""
    args.api_concurrency, args.log_level, args.keep_limits = 8, "info", False
    args.many_connections = args.connections
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    load_options(parser)
    parser.add_argument("--only", nargs="+", choices=VARIANTS, default=VARIANTS,
                        help="the variants to run besides sink and full")
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    return with_run_defaults(parser.parse_args(argv))


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        sys.exit(serve(arguments.serve, arguments.config))
    asyncio.run(compare(arguments))
