"""The spool's group commits in a process of their own: a measurement, not a design.

bench/stages.py's `writer-process` variant patches the gateway's spool writer
(gateway.spool.writer.Writer) so that its thread no longer runs a batch's jobs itself. It
pickles them (every job is a functools.partial of a spool module's function, or one of
`submit_together`'s items), sends them to this process, and blocks on the reply, without the
GIL. This process runs them in one transaction on a writing connection of its own and answers
with their results once the COMMIT has returned, so a 250 still waits for it.

What it leaves out: a job that fails fails its whole batch (no one-by-one retry), and nothing
restarts this process if it dies. It is there to say what the writer thread's share of the GIL
costs the accept rate, before anyone builds it properly.
"""

from __future__ import annotations

import contextlib
import pickle
import sqlite3
import struct
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

LENGTH = struct.Struct("!I")


def send(stream: IO[bytes], value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(LENGTH.pack(len(data)) + data)
    stream.flush()


def receive(stream: IO[bytes]) -> Any:
    head = stream.read(LENGTH.size)
    if len(head) < LENGTH.size:
        return None
    (length,) = LENGTH.unpack(head)
    return pickle.loads(stream.read(length))   # our own parent, over a pipe


def serve(path: Path) -> int:
    from gateway.spool import schema, sql
    from gateway.spool.writer import _run_jobs

    conn: sqlite3.Connection = schema.open_writer(path)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while (batch := receive(inp)) is not None:
        jobs = [SimpleNamespace(fn=fn, run_all=run_all, item=item) for fn, run_all, item in batch]
        try:
            conn.execute(sql.BEGIN_WRITE)
            results = _run_jobs(conn, jobs)  # type: ignore[arg-type]
            conn.execute(sql.COMMIT)
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(sql.ROLLBACK)
            send(out, ("error", f"{type(exc).__name__}: {exc}"))
            continue
        send(out, ("ok", results))
    conn.close()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(serve(Path(sys.argv[1])))
