"""The HTTP port's connection caps, as the SMTP port has them.

aiohttp bounds neither how many connections it holds nor (before its keep-alive timer, an hour
by default) how long an idle one may stay: 1,100 idle connections to the HTTP port used up a
1,024-descriptor limit and SMTP and /healthz with it. Every connection passes a `Gate` before
aiohttp sees it: at a cap (per address, or in all) the oldest connection is closed to make room
for it, and past twice a cap it is answered 503 and closed at once. Inside the caps it is
aiohttp's, whose keep-alive timer (armed at the connection's start too, see
aiohttp.web_protocol.RequestHandler.connection_made) closes it after IDLE_TIMEOUT without a
request, and between requests.

One name of aiohttp's that is not its documented API: RequestHandler's `_waiter`, set while the
connection waits for a request (aiohttp's keep-alive timer tests it the same way), to tell an
idle connection (closed at once) from a busy one (closed after its response).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from gateway.config.networks import address_key

log = logging.getLogger("smtp2pulse.status")

# Far above what the platform's callbacks, a monitor and a person at the status page need; twice
# the total (the hard bound) stays below a 1,024-descriptor limit with SMTP's own caps beside it.
MAX_CONNECTIONS = 256
MAX_PER_ADDRESS = 64
# Seconds a connection may wait for its first request, between requests, and for a request's
# body; no client of this port (monitors, the platform, a browser) idles longer and expects it.
IDLE_TIMEOUT = 15.0
REFUSAL_LOG_EVERY = 60.0  # at most one log line a minute for refused connections
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n"
)


class Gate:
    """The protocol factory for the HTTP listener: `make` is aiohttp's (its web.Server)."""

    def __init__(
        self,
        make: Callable[[], asyncio.Protocol],
        max_connections: int = MAX_CONNECTIONS,
        max_per_address: int = MAX_PER_ADDRESS,
        ipv6_prefix: int = 64,
    ) -> None:
        self.make = make
        self.ipv6_prefix = ipv6_prefix
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.admitted: dict[_Guarded, None] = {}  # oldest first
        self.by_address: Counter[str] = Counter()
        self.refused = 0
        self.evicted = 0
        self._refused_since_log = 0
        self._logged_at = -REFUSAL_LOG_EVERY

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self)

    def admit(self, connection: _Guarded) -> bool:
        address = connection.address
        # A full port takes the newcomer and closes an old connection instead (at once if
        # idle, after its response if not): the oldest of the newcomer's own address when
        # that address is at its cap (so one address churns only its own), else the oldest
        # of all. A flood of idle connections then cannot keep /healthz or the platform's
        # callbacks out. Only when the old ones are all busy does it refuse, at twice a cap.
        if (
            self.by_address[address] >= 2 * self.max_per_address
            or len(self.admitted) >= 2 * self.max_connections
        ):
            self._note_refusal(address)
            return False
        if self.by_address[address] >= self.max_per_address:
            self._evict_oldest(address)
        elif len(self.admitted) >= self.max_connections:
            self._evict_oldest(None)
        self.admitted[connection] = None
        self.by_address[address] += 1
        return True

    def release(self, connection: _Guarded) -> None:
        if self.admitted.pop(connection, False) is None:
            self.by_address[connection.address] -= 1
            if not self.by_address[connection.address]:
                del self.by_address[connection.address]

    def _evict_oldest(self, address: str | None) -> None:
        for connection in self.admitted:
            if not connection.evicted and address in (None, connection.address):
                connection.evict()
                self.evicted += 1
                return

    def _note_refusal(self, address: str) -> None:
        # One line per refusal would let the flood write the log full as well.
        self.refused += 1
        self._refused_since_log += 1
        now = asyncio.get_running_loop().time()
        if now - self._logged_at >= REFUSAL_LOG_EVERY:
            log.warning(
                "HTTP connections refused: %d since the last such line (now from %s; "
                "at most %d per address)",
                self._refused_since_log,
                address,
                self.max_per_address,
            )
            self._logged_at = now
            self._refused_since_log = 0


class _Guarded(asyncio.Protocol):
    """One connection: refused at once, or handed to aiohttp's protocol, which it forwards to."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.inner: Any = None  # aiohttp's RequestHandler once admitted
        self.address = ""
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True
        # aiohttp's own test for an idle connection (its keep-alive timer's): waiting for a
        # request. Its close() on an idle one would end the handler and leave the socket open.
        if getattr(self.inner, "_waiter", None) is not None:
            self.inner.force_close()
        else:
            self.inner.close()  # closed once the response in hand is out

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        # Counted as SMTP counts a client: an IPv6 host per its /64, which it can roam.
        self.address = address_key(
            str(peer[0]) if isinstance(peer, tuple) and peer else str(peer), self.gate.ipv6_prefix
        )
        if not self.gate.admit(self):
            # Not isinstance(asyncio.WriteTransport): uvloop's transports do not derive from it.
            writable = cast(asyncio.Transport, transport)
            writable.write(_BUSY)
            writable.close()
            return
        self.inner = self.gate.make()
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.gate.release(self)
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            result: bool | None = self.inner.eof_received()
            return result
        return None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()
