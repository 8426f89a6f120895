"""What the daemon (sender_process.py) and its child (sender_child.py) say to each other.

Each message is one of the frozen dataclasses here, framed as a 4-byte length and a pickle. Both
ends are this program, the child started by the parent with the other end of a socket pair, so
unpickling is safe. They live in their own module, not in sender_child.py, which the child
runs as `__main__`: a class pickled by the parent must unpickle as the same class there.
"""

from __future__ import annotations

import asyncio
import math
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config.model import ApiConfig
from gateway.delivery.request import Outcome

_LENGTH = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class Start:
    """Parent to child, first: how to run."""

    api: ApiConfig
    log_level: str
    log_format: str
    mask_personal: bool


@dataclass(frozen=True, slots=True)
class Ready:
    """Child to parent: its client started."""


@dataclass(frozen=True, slots=True)
class Failed:
    """Child to parent, instead of Ready."""

    reason: str


@dataclass(frozen=True, slots=True)
class Send:
    """One request: a send-message (one request, `batch` false) or a send-list-messages.

    Its deadlines are time.monotonic() values, which on Linux (CLOCK_MONOTONIC) are the same
    clock in both processes: not begun by `start_by`, the request is not sent at all (a child
    that was stalled must not send what the parent has given up on and will send again);
    not answered by `answer_by`, when the parent stops waiting, it is abandoned."""

    number: int
    requests: tuple[Mapping[str, str], ...]
    token: str
    batch: bool
    start_by: float = math.inf
    answer_by: float = math.inf


@dataclass(frozen=True, slots=True)
class Answer:
    """Child to parent: the outcomes of Send `number`, one per request, in order."""

    number: int
    outcomes: tuple[Outcome, ...]


@dataclass(frozen=True, slots=True)
class Mask:
    """Whether log lines hide personal data now (follows a reload)."""

    on: bool


@dataclass(frozen=True, slots=True)
class Ping:
    """Parent to child, every second: answered at once by a child whose loop still turns."""


@dataclass(frozen=True, slots=True)
class Pong:
    """Child to parent: the answer to a Ping."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Finish: the parent's worker has had its grace for what is still in flight."""


Message = Start | Ready | Failed | Send | Answer | Mask | Ping | Pong | Stop


def frame(message: Message) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


async def read(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None once the other end is gone."""
    try:
        (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
        # Only this program's own parent or child writes to the socket pair.
        message: Message = pickle.loads(await reader.readexactly(length))  # noqa: S301
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return message


class Batcher:
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
