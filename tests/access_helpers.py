"""Shared by the access-control tests: certificates, users, raw SMTP over a socket."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.smtp.passwords import hash_password

PASSWORD = "correct horse battery staple"
# Hashing is deliberately slow; one hash serves every test.
PASSWORD_HASH = hash_password(PASSWORD)
USER_TOKEN = "tok-USER-crm-abcdef0123456789"


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def make_certificate(directory: Path) -> Certificate:
    """A self-signed certificate for 127.0.0.1 and gw.test, made with the openssl tool."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=gw.test",
            "-addext",
            "subjectAltName=DNS:gw.test,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return Certificate(cert, key)


def tls_section(certificate: Certificate, **extra: Any) -> dict[str, Any]:
    return {"cert": str(certificate.cert), "key": str(certificate.key), **extra}


def users(**per_user: dict[str, Any]) -> dict[str, Any]:
    return {
        name: {"password_hash": PASSWORD_HASH, **settings} for name, settings in per_user.items()
    }


def plain_auth(user: str, password: str = PASSWORD) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def replies(data: bytes) -> list[tuple[int, str]]:
    """(code, text) of every final reply line in a server's output."""
    found = []
    for line in data.decode("utf-8", "replace").split("\r\n"):
        if len(line) >= 4 and line[:3].isdigit() and line[3] == " ":
            found.append((int(line[:3]), line[4:]))
    return found


def converse(host: str, port: int, chunks: list[bytes], timeout: float = 10.0) -> bytes:
    """Send each chunk after reading what the server said; everything it said until it closes
    or the last chunk is answered (QUIT is appended)."""
    received = b""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        reader = sock.makefile("rb")
        received += reader.readline()
        for chunk in [*chunks, b"QUIT\r\n"]:
            try:
                sock.sendall(chunk)
            except OSError:
                break
            received += _read_replies(reader, chunk)
            if received.endswith(b"\r\n") and received.rsplit(b"\r\n", 2)[-2][:3] in (
                b"421",
                b"221",
            ):
                break
    return received


def _read_replies(reader: Any, chunk: bytes) -> bytes:
    """Read one final reply per command line in `chunk` (a DATA body counts as one)."""
    wanted = _commands_in(chunk)
    got = b""
    while wanted > 0:
        try:
            line = reader.readline()
        except OSError:
            break
        if not line:
            break
        got += line
        if line[3:4] != b"-":
            wanted -= 1
            if line[:3] == b"421":
                break
    return got


def _commands_in(chunk: bytes) -> int:
    if chunk.endswith(b"\r\n.\r\n"):
        return 1  # a message body: one reply, at its end
    return max(1, chunk.count(b"\r\n"))
