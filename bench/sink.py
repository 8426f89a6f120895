"""The ceiling: aiosmtpd's own Sink handler, served the way the gateway serves SMTP.

Same protocol class, served the same way (`loop.create_server`), same size limit, but a handler
that stores nothing: whatever the gateway loses against this is the price of parsing, mapping
and the fsync'd spool. The loop differs: Sink runs on asyncio's own, aiosmtpd's default, while
the gateway runs on uvloop when the `speed` extra is installed (bench/README.md, Caveats).

Prints its port on the first line of stdout, then serves until SIGTERM/SIGINT, or until
--max-seconds have passed or its parent is gone (a bench that crashed must not leave it behind).
"""

from __future__ import annotations

import argparse
import asyncio

from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import SMTP
from lifetime import until_stopped

DATA_SIZE_LIMIT = 1024 * 1024  # the gateway's default max_message_size (1MiB)


async def serve(port: int, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            Sink(), hostname="bench", data_size_limit=DATA_SIZE_LIMIT, enable_SMTPUTF8=True
        ),
        "127.0.0.1",
        port,
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await until_stopped(max_seconds)
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="aiosmtpd Sink on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=3600)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.max_seconds))


if __name__ == "__main__":
    main()
