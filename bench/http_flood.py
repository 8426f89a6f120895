"""Idle connections to the HTTP port under a descriptor limit (issue 29 item 11).

Starts `smtp2pulse serve` (dry run) under `prlimit --nofile=LIMIT`, opens N idle connections to
its HTTP port from S loopback addresses (127.0.0.2, …), then probes /healthz and an SMTP NOOP
from 127.0.0.1, waits past the HTTP idle timeout, counts the connections still open and probes
again. Before the caps, 1,100 connections under 1,024 descriptors broke both probes and all
stayed open.

    python bench/http_flood.py                      # 1100 connections, 10 addresses, limit 1024
    python bench/http_flood.py --connections 1100 --addresses 1 --nofile 1024
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def probe(http: int, smtp: int) -> str:
    started = time.monotonic()
    try:
        health: object = urllib.request.urlopen(
            f"http://127.0.0.1:{http}/healthz", timeout=5
        ).status
    except Exception as exc:
        health = type(exc).__name__
    took = (time.monotonic() - started) * 1000
    try:
        with smtplib.SMTP("127.0.0.1", smtp, timeout=5) as client:
            noop: object = client.noop()[0]
    except Exception as exc:
        noop = type(exc).__name__
    return f"/healthz {health} in {took:.0f} ms, SMTP NOOP {noop}"


async def flood(args: argparse.Namespace, http: int, smtp: int) -> None:
    connections = []
    for n in range(args.connections):
        try:
            connections.append(
                await asyncio.open_connection(
                    "127.0.0.1", http, local_addr=(f"127.0.0.{2 + n % args.addresses}", 0)
                )
            )
        except OSError as exc:
            print(f"connection {n} failed: {exc}")
            break
    await asyncio.sleep(1)
    print(f"opened {len(connections)}: {await asyncio.to_thread(probe, http, smtp)}")
    await asyncio.sleep(args.wait)
    for reader, _ in connections:
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(reader.read(), 0.01)
    still = sum(not reader.at_eof() for reader, _ in connections)
    print(
        f"after {args.wait + 1:.0f} s: {still} of {len(connections)} still open; "
        f"{await asyncio.to_thread(probe, http, smtp)}"
    )
    for _, writer in connections:
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1100)
    parser.add_argument("--addresses", type=int, default=10)
    parser.add_argument("--nofile", type=int, default=1024)
    parser.add_argument("--wait", type=float, default=17.0, help="past the idle timeout (15 s)")
    args = parser.parse_args()
    http, smtp = free_port(), free_port()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "smtp": {"listen": f"127.0.0.1:{smtp}", "hostname": "gw.test"},
                    "api": {"base_url": "http://127.0.0.1:9/api", "token": "t", "dry_run": True},
                    "spool": {"path": str(Path(folder) / "spool.sqlite3")},
                    "http": {
                        "listen": f"127.0.0.1:{http}",
                        "public_url": "http://gw.invalid",
                        "callback_secret": "0123456789abcdef0123",
                    },
                    "domains": {"sms.local": {"type": "sms", "sender": "Shop"}},
                }
            )
        )
        daemon = subprocess.Popen(
            [
                "prlimit",
                f"--nofile={args.nofile}:{args.nofile}",
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "-c",
                str(config),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", http)) == 0:
                        break
                time.sleep(0.1)
            print(
                f"{args.connections} idle HTTP connections from {args.addresses} addresses, "
                f"LimitNOFILE={args.nofile}"
            )
            asyncio.run(flood(args, http, smtp))
        finally:
            daemon.terminate()
            daemon.wait(30)


if __name__ == "__main__":
    main()
