from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import secrets
import smtplib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config.loader import parse_config
from gateway.config.model import Config
from gateway.spool.sqlite.store import SqliteSpool
from gateway.spool.states import State
from tests.fakeplatform import FakePlatform
from tests.pgserver import PgServer

TOKEN = "tok-SECRET-0123456789abcdef"


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], within: float = 10.0, every: float = 0.01
) -> None:
    """Until `condition()` holds, for state that other tasks, threads or processes change;
    a condition that must await (the spool, an HTTP request) returns an awaitable instead.
    Raises TimeoutError after `within` seconds."""

    async def holds() -> bool:
        result = condition()
        return await result if inspect.isawaitable(result) else result

    async with asyncio.timeout(within):
        while not await holds():  # noqa: ASYNC110 - nothing to wait on but the state itself
            await asyncio.sleep(every)


def base_config(spool: Path, base_url: str) -> dict[str, Any]:
    return {
        "smtp": {
            "listen": "127.0.0.1:0",
            "hostname": "gw.test",
            "max_message_size": "64KiB",
            "max_recipients": 5,
        },
        "api": {"base_url": base_url, "token": TOKEN, "timeout": "2s"},
        "spool": {"path": str(spool), "retry": ["50ms", "100ms"], "give_up_after": "1d"},
        "shutdown_timeout": "2s",
        "domains": {
            "sms.local": {"type": "sms", "sender": "MyShop"},
            "mail.local": {"type": "email", "sender": "shop@example.com"},
            "push.local": {"type": "push", "recipient": "verbatim"},
        },
    }


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)  # never share a caller's dict
    return merged


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs the CLI in-process installs the daemon's handler on pytest's captured
    stderr; left in place, it writes into a closed stream in a later test ("Logging error")."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
async def platform() -> AsyncIterator[FakePlatform]:
    fake = FakePlatform()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def make_config(tmp_path: Path, platform: FakePlatform) -> Callable[..., Config]:
    def make(changes: dict[str, Any] | None = None) -> Config:
        data = merge(base_config(tmp_path / "spool.sqlite3", platform.base_url), changes or {})
        return parse_config(data, env={})

    return make


class Running:
    """A started gateway and how to talk to it."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.host, self.port = gateway.smtp.addresses[0]

    @property
    def sqlite(self) -> SqliteSpool:
        """The SQLite spool, for a test that reads or changes its rows directly."""
        spool = self.gateway.spool
        assert isinstance(spool, SqliteSpool)
        return spool

    def client(self) -> smtplib.SMTP:
        client = smtplib.SMTP(self.host, self.port, timeout=10)
        client.ehlo("client.test")
        return client

    async def send(
        self,
        message: EmailMessage | bytes | str,
        to: list[str] | str,
        sender: str = "app@corp.test",
    ) -> dict[str, tuple[int, bytes]]:
        """Send with smtplib; returns smtplib's refused-recipients dict (raises on refusal)."""
        recipients = [to] if isinstance(to, str) else to

        def run() -> dict[str, tuple[int, bytes]]:
            with self.client() as client:
                if isinstance(message, EmailMessage):
                    return client.send_message(message, sender, recipients)
                return client.sendmail(sender, recipients, message)

        return await asyncio.to_thread(run)

    async def submit(
        self, message: EmailMessage, to: list[str] | str, sender: str = "app@corp.test"
    ) -> str:
        """Send one message; returns the queue id from the 250 reply."""
        recipients = [to] if isinstance(to, str) else to

        def run() -> tuple[int, bytes]:
            with self.client() as client:
                client.mail(sender)
                for rcpt in recipients:
                    client.rcpt(rcpt)
                return client.data(message.as_bytes())

        code, text = await asyncio.to_thread(run)
        assert code == 250, (code, text)
        return text.rsplit(b" ", 1)[1].decode()

    async def wait_final(self, queue_id: str, within: float = 10.0) -> list[State]:
        """Until every delivery of a message is finished; returns their states."""
        states: list[State] = []

        async def finished() -> bool:
            nonlocal states
            detail = await self.gateway.spool.show_message(queue_id)
            assert detail is not None
            states = [d.state for d in detail.deliveries]
            return all(state in ("sent", "refused", "failed") for state in states)

        await eventually(finished, within, every=0.02)
        return states

    async def dialog(self, *commands: str | bytes) -> list[tuple[int, bytes]]:
        """Send raw command lines after EHLO; returns each reply (code, text)."""

        def run() -> list[tuple[int, bytes]]:
            replies = []
            with self.client() as client:
                for command in commands:
                    data = command if isinstance(command, bytes) else command.encode()
                    client.send(data + b"\r\n")
                    replies.append(client.getreply())
            return replies

        return await asyncio.to_thread(run)


@pytest.fixture
async def start_gateway(
    make_config: Callable[..., Config],
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    started: list[Gateway] = []

    async def start(changes: dict[str, Any] | None = None, **kwargs: Any) -> Running:
        gateway = Gateway(make_config(changes), **kwargs)
        await gateway.start()
        started.append(gateway)
        return Running(gateway)

    yield start
    for gateway in reversed(started):
        await gateway.stop()


@pytest.fixture
async def gw(start_gateway: Callable[..., Awaitable[Running]]) -> Running:
    return await start_gateway()


def text_message(subject: str = "Hello", body: str = "World", **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "App <app@corp.test>"
    message["To"] = "someone@sms.local"
    message["Subject"] = subject
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL server for the session's PostgreSQL tests (each its own database)."""
    server = PgServer()
    server.init()
    server.start()
    yield server
    server.remove()


@pytest.fixture
async def pg_url(pg_server: PgServer) -> str:
    """A fresh database on the session's server: tests never see each other's rows."""
    return await fresh_database(pg_server)


async def fresh_database(pg_server: PgServer) -> str:
    import asyncpg

    name = f"t{secrets.token_hex(6)}"
    conn = await asyncpg.connect(pg_server.url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return pg_server.url.rsplit("/", 1)[0] + "/" + name
