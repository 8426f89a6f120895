"""Implicit-TLS (SMTPS) listeners that decide at TCP accept, before the TLS handshake.

With `create_server(ssl=...)` the SMTP protocol first hears of a connection once its handshake is
over, so a client that connects and stays silent held a slot past every cap, from a refused
network too, for as long as the handshake timeout. Here the listener accepts the bare socket,
asks `Admission.admit` (networks, login block, connection caps), closes a refused one at once (it
would not read an SMTP reply in clear anyway), and only then hands the socket to the loop's TLS
with the newest config's context and a handshake timeout of its own.

Not `start_tls` on a plain protocol: uvloop starts reading after connection_made, whatever it
asked, so the ClientHello could reach the plain protocol before the TLS layer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from gateway.config.model import Config, Listener
from gateway.smtp.admission import Admission, client_host
from gateway.smtp.session import GatewaySession

log = logging.getLogger("smtp2pulse.smtp")

_BACKLOG = 100  # what asyncio's create_server uses


class TlsListener:
    def __init__(
        self,
        listener: Listener,
        admission: Admission,
        config: Callable[[], Config],
        session: Callable[[str], GatewaySession],
        closing: Callable[[], bool],
    ) -> None:
        self.listener = listener
        self.admission = admission
        self.config = config
        self.session = session
        self.closing = closing
        self.sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self.listener.host, self.listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(_BACKLOG)
                sock.setblocking(False)
        except OSError:
            self.close()
            raise
        for sock in self.sockets:
            self._spawn(self._accept(sock))

    def close(self) -> None:
        """Stop accepting; handshakes under way end too (their slots come back)."""
        for task in list(self._tasks):
            task.cancel()
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except OSError as exc:
                # Out of descriptors or buffers: wait instead of spinning, as asyncio's own
                # server does.
                log.warning("SMTPS accept on %s failed: %s", self.listener, exc)
                await asyncio.sleep(1)
                continue
            self._admit(conn, peer)

    def _admit(self, conn: socket.socket, peer: Any) -> None:
        host = client_host(peer)
        smtp = self.config().smtp
        key, refused = self.admission.admit(host, smtp)
        refusal = None if refused is None else str(refused)
        if refused is None and (self.closing() or smtp.tls is None):
            self.admission.connections.close(key)
            refusal = "shutting down" if self.closing() else "smtp.tls was removed by a reload"
        if refusal is not None:
            log.warning(
                "refused SMTPS connection from %s before its TLS handshake: %s", host, refusal
            )
            conn.close()
            return
        assert smtp.tls is not None
        self._spawn(
            self._handshake(
                conn, host, self.session(key), smtp.tls.context, smtp.tls.handshake_timeout
            )
        )

    async def _handshake(
        self,
        conn: socket.socket,
        host: str,
        session: GatewaySession,
        context: Any,
        handshake_timeout: float,
    ) -> None:
        # The session exists (and holds its slot) from accept; it hears of the connection
        # only once the handshake is over.
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: session, conn, ssl=context, ssl_handshake_timeout=handshake_timeout
            )
        except Exception as exc:
            log.info("TLS handshake with %s failed: %s", host, str(exc) or type(exc).__name__)
            session.release_slot()
            conn.close()
        except asyncio.CancelledError:
            session.release_slot()
            conn.close()
            raise
