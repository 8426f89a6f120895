"""A real PostgreSQL server for the tests: `initdb` and `pg_ctl` in a temporary directory.

The server binaries come from Debian's `postgresql` package (`.ci/run` installs it when
missing). `initdb` refuses to run as root, so as root every server command runs as the
`postgres` user the package creates, in a directory handed over to it. The server listens on
127.0.0.1 at a free port with `trust` authentication: it is reachable only from this machine
and lives only as long as the test session.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

INITDB_TIMEOUT = 120.0
START_TIMEOUT = 60.0


def server_binaries() -> Path | None:
    """The folder holding pg_ctl and initdb: Debian keeps them off PATH, per major version."""
    found = shutil.which("pg_ctl")
    if found and Path(found).with_name("initdb").exists():
        return Path(found).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgServer:
    """One PostgreSQL cluster: `start`, `stop` (fast shutdown), `kill` (SIGKILL), `url`."""

    def __init__(self) -> None:
        binaries = server_binaries()
        if binaries is None:
            raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")
        self.bin = binaries
        # Its own folder under /tmp, not pytest's tmp_path: that one is private to root, and
        # the server runs as `postgres` when the tests run as root.
        self.base = Path(tempfile.mkdtemp(prefix="smtp2pulse-pg-"))
        self.data = self.base / "data"
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.base, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.base
        )

    def init(self) -> None:
        done = self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            timeout=INITDB_TIMEOUT,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()}")
        with (self.data / "postgresql.conf").open("a") as conf:
            # Loopback only, the socket in our own directory (not /var/run/postgresql, which
            # may not exist without the packaged cluster), and small enough for a shared box.
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.base}'\nmax_connections = 100\n"
                "shared_buffers = 32MB\nfsync = on\n"
            )

    def start(self) -> None:
        done = self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.base / "server.log"),
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "start",
            timeout=START_TIMEOUT + 10,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()} {self.log()}")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL did not listen on {self.port}: {self.log()}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", timeout=60)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        path = self.base / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""
