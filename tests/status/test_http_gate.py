"""Issue 29 item 11: the HTTP port caps its connections and closes idle ones, as SMTP does.

Before: 1,100 idle connections to the HTTP port were all held (aiohttp's keep-alive timer is an
hour), and under a 1,024-descriptor limit they broke SMTP and /healthz. The flood comes from
other loopback addresses (127.0.0.2, …) than the monitor's 127.0.0.1, as it would from other
hosts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway.status.gate import IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_PER_ADDRESS
from tests.conftest import Running, eventually, text_message
from tests.status.test_status import HTTP, base, get

Connection = tuple[asyncio.StreamWriter, "asyncio.Task[bytes]"]


async def idle(host: str, port: int, source: str) -> Connection:
    """A connection that sends nothing; its task ends when the server closes it."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    return writer, asyncio.create_task(reader.read())


def closed(connections: list[Connection]) -> int:
    return sum(task.done() for _, task in connections)


async def test_idle_http_connections_are_capped_and_closed(
    start_gateway: Callable[..., Awaitable[Running]], platform: object
) -> None:
    gw = await start_gateway(HTTP)
    assert gw.gateway.status is not None and gw.gateway.status.gate is not None
    gate = gw.gateway.status.gate
    host, port = gw.gateway.status.addresses[0]
    flood: list[Connection] = []
    try:
        # 1,100 from one address: it keeps at most MAX_PER_ADDRESS, its oldest closed first.
        for _ in range(1100):
            flood.append(await idle(host, port, "127.0.0.2"))
        await eventually(lambda: closed(flood) == 1100 - MAX_PER_ADDRESS)
        assert all(task.done() for _, task in flood[: 1100 - MAX_PER_ADDRESS])
        assert not any(task.done() for _, task in flood[-MAX_PER_ADDRESS:])
        # From many addresses: at most MAX_CONNECTIONS in all.
        many = [await idle(host, port, f"127.0.0.{3 + n // 60}") for n in range(300)]
        flood += many
        await eventually(lambda: len(gate.admitted) == MAX_CONNECTIONS)
        # The monitor and SMTP still get in, and answer.
        assert (await get(base(gw) + "/healthz"))[0] == 200
        await gw.send(text_message("still", "here"), "79001234567@sms.local")
        # And every idle one is closed by the server after IDLE_TIMEOUT.
        await eventually(lambda: closed(flood) == len(flood), within=IDLE_TIMEOUT + 5)
        assert not gate.admitted
    finally:
        for writer, task in flood:
            task.cancel()
            writer.close()


async def test_a_callback_body_trickled_in_is_cut_off(
    start_gateway: Callable[..., Awaitable[Running]], platform: object
) -> None:
    gw = await start_gateway(HTTP)
    assert gw.gateway.status is not None
    host, port = gw.gateway.status.addresses[0]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            b"POST /callback?d=1&q=ABC HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nstatus="
        )
        await writer.drain()
        async with asyncio.timeout(IDLE_TIMEOUT + 5):
            status_line = await reader.readline()
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
    finally:
        writer.close()
