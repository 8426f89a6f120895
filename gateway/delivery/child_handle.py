"""The daemon's hold on one sender child (sender_child.py): its process and its end of the socket
pair, from the exec to the child's Ready, and how it is killed.

SenderProcess (sender_process.py) holds one at a time and replaces it when it dies or hangs; what
the child is asked and what it answers stay there. The exec, the connection and the handshake
are separate steps: SenderProcess holds the process from the moment it exists, so a stop during
the handshake still finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys

from gateway.delivery.child_protocol import Batcher, Failed, Message, Ready, Start, frame, read
from gateway.errors import SenderProcessError

START_TIMEOUT = 30.0


class Child:
    def __init__(self, process: asyncio.subprocess.Process, parent_end: socket.socket) -> None:
        self.process = process
        self.reader: asyncio.StreamReader | None = None
        self.out: Batcher | None = None
        self._parent_end = parent_end

    @classmethod
    async def spawn(cls) -> Child:
        """The child process, started with its end of a new socket pair; not yet ready."""
        parent_end, child_end = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.delivery.sender_child",
                str(child_end.fileno()),
                pass_fds=(child_end.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        return cls(process, parent_end)

    @property
    def running(self) -> bool:
        return (
            self.process.returncode is None
            and self.out is not None
            and not self.out.writer.is_closing()
        )

    async def connect(self) -> None:
        self.reader, writer = await asyncio.open_connection(sock=self._parent_end)
        self.out = Batcher(writer)

    async def handshake(self, start: Start) -> None:
        """Tell the child how to run and wait for its Ready; one that is not ready is killed."""
        assert self.reader is not None and self.out is not None
        self.out.writer.write(frame(start))
        reply: Message | None
        try:
            reply = await asyncio.wait_for(read(self.reader), START_TIMEOUT)
        except TimeoutError:
            reply = Failed(f"not ready within {START_TIMEOUT:.0f}s")
        if not isinstance(reply, Ready):
            reason = reply.reason if isinstance(reply, Failed) else "it exited"
            await self._reap()
            raise SenderProcessError(f"sender process did not start: {reason}")

    async def _reap(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        self.close()

    def close(self) -> None:
        if self.out is not None:
            self.out.writer.close()
            self.out = None
