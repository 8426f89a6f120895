"""The SMTP front: the listeners, the open sessions, and their drain on stop.

aiosmtpd does the protocol in our own event loop (gateway.smtp.session); the handler behind it
(gateway.smtp.handler) decides what to take and answers 250 only after the spool has committed
the message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from gateway.config.model import Config, Listener
from gateway.smtp.admission import Admission
from gateway.smtp.handler import Handler
from gateway.smtp.session import GatewaySession
from gateway.smtp.smtps import TlsListener
from gateway.spool.interface import SpoolInterface
from gateway.status.metrics import Metrics

log = logging.getLogger("smtp2pulse.smtp")


class Sessions:
    """The open SMTP connections, so that a stop can drain them."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.open: set[GatewaySession] = set()
        self.closing = False
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, session: GatewaySession) -> None:
        self.open.add(session)
        self._empty.clear()
        self.metrics.sessions.inc()
        self.metrics.sessions_open.set(len(self.open))

    def discard(self, session: GatewaySession) -> None:
        self.open.discard(session)
        self.metrics.sessions_open.set(len(self.open))
        if not self.open:
            self._empty.set()

    async def drain(self, grace: float) -> None:
        """Say 421 to idle sessions at once, to busy ones when their command ends."""
        self.closing = True
        for session in list(self.open):
            if not session.busy:
                session.say_goodbye()
        try:
            await asyncio.wait_for(self._empty.wait(), grace)
        except TimeoutError:
            log.warning(
                "%d SMTP sessions still busy after %.0fs; closing them", len(self.open), grace
            )
            for session in list(self.open):
                session.abort()


class SmtpFront:
    """Binds the listeners and drains them on stop."""

    def __init__(
        self,
        config: Callable[[], Config],
        spool: SpoolInterface,
        on_stored: Callable[[], None],
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.handler = Handler(spool, on_stored, self.metrics)
        self.sessions = Sessions(self.metrics)
        self.admission = Admission(self.metrics)
        self._servers: list[asyncio.Server] = []
        self._tls_listeners: list[TlsListener] = []

    def _protocol(self, listener: Listener, admitted: str | None = None) -> GatewaySession:
        config = self.config()
        return GatewaySession(
            self.handler,
            self.sessions,
            config,
            admission=self.admission,
            listener=listener,
            current_config=self.config,
            admitted=admitted,
            data_size_limit=config.smtp.max_message_size,
            enable_SMTPUTF8=True,
            hostname=config.smtp.hostname,  # never the default: it does a DNS lookup
            ident="ESMTP smtp2pulse",
            timeout=config.smtp.timeout,
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        smtp = self.config().smtp
        for listener in (*smtp.listen, *(smtp.tls.implicit_listen if smtp.tls else ())):
            try:
                if listener.implicit_tls:
                    tls_listener = TlsListener(
                        listener,
                        self.admission,
                        self.config,
                        functools.partial(self._protocol, listener),
                        lambda: self.sessions.closing,
                    )
                    self._tls_listeners.append(tls_listener)
                    await tls_listener.start()
                    sockets: list[Any] = tls_listener.sockets
                else:
                    server = await loop.create_server(
                        functools.partial(self._protocol, listener),
                        listener.host,
                        listener.port,
                        reuse_address=True,
                    )
                    self._servers.append(server)
                    sockets = list(server.sockets)
            except OSError as exc:
                await self.close_listeners()
                raise OSError(exc.errno, f"cannot listen on {listener}: {exc.strerror}") from exc
            log.info("SMTP listening on %s", ", ".join(_describe(s) for s in sockets))

    def listening(self) -> bool:
        return bool(self._servers or self._tls_listeners) and not self.sessions.closing

    @property
    def addresses(self) -> list[tuple[str, int]]:
        # Implicit-TLS listeners come last in the config, and last here.
        return [
            *(sock.getsockname()[:2] for s in self._servers for sock in s.sockets),
            *(sock.getsockname()[:2] for t in self._tls_listeners for sock in t.sockets),
        ]

    async def close_listeners(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        for tls_listener in self._tls_listeners:
            tls_listener.close()
        self._tls_listeners.clear()

    async def stop(self, grace: float) -> None:
        await self.close_listeners()
        await self.sessions.drain(grace)


def _describe(sock: Any) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
