"""What tests/systemd/inside.py does its checks with, inside the container (stdlib only).

Commands run as the operator would (bash, as root, from the repository's copy), documented blocks
read from README.md and docs/ and run as pasted, a client for SMTP and the status server, and the
record of every check with the PASS/FAIL report.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import smtplib
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

SRC = Path("/root/src")
UNIT = "smtp2pulse.service"
CONFIG = "/etc/smtp2pulse/config.yaml"
PLATFORM_PORT = 8099
PLATFORM_LOG = Path("/root/platform-requests.jsonl")
SMTP = ("127.0.0.1", 2525)
TOKEN = "ci-token-" + secrets.token_hex(8)
RESULTS: list[tuple[str, bool, str]] = []


class CheckFailed(Exception):
    pass


def sh(
    command: str, check: bool = True, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
        cwd=SRC,
    )
    if check and done.returncode != 0:
        raise CheckFailed(
            f"`{command[:200]}` exited {done.returncode}:\n"
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return done


def show(prop: str) -> str:
    return sh(f"systemctl show -P {prop} {UNIT}").stdout.strip()


def eventually(what: Callable[[], Any], timeout: float, message: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = what()
        except (OSError, smtplib.SMTPException, CheckFailed) as exc:
            last, result = exc, None
        if result:
            return result
        time.sleep(every)
    raise CheckFailed(f"{message} (within {timeout:g}s; last: {last!r})")


def check(name: str) -> Callable[[Callable[[], str | None]], Callable[[], str | None]]:
    def run(step: Callable[[], str | None]) -> Callable[[], str | None]:
        started = time.monotonic()
        try:
            note = step() or ""
            RESULTS.append((name, True, note))
        except Exception as exc:
            note = f"{type(exc).__name__}: {exc}"
            RESULTS.append((name, False, note))
        took = time.monotonic() - started
        ok = RESULTS[-1][1]
        print(
            f"[{'ok' if ok else 'FAIL'}] {name} ({took:.1f}s){': ' + note if note else ''}",
            flush=True,
        )
        return step

    return run


def doc_block(marker: str, doc: str = "README.md") -> str:
    text = (SRC / doc).read_text(encoding="utf-8")
    found = re.search(rf"<!-- ci:{marker} -->\s*```sh\n(.*?)```", text, re.S)
    if not found:
        raise CheckFailed(f"{doc} has no ```sh block after <!-- ci:{marker} -->")
    return found.group(1)


def run_doc(marker: str, replace: dict[str, str] | None = None, doc: str = "README.md") -> None:
    """Runs a documented block as an operator pastes it."""
    block = doc_block(marker, doc)
    for old, new in (replace or {}).items():
        if old not in block:
            raise CheckFailed(f"README block {marker} no longer contains {old!r}")
        block = block.replace(old, new)
    prelude = (
        "set -euo pipefail\n"
        'sudo() { "$@"; }\n'
        # No package index here: the packages the README installs must be in the tree.
        'apt-get() { [ "$1" = install ] || return 0; shift; for p in "$@"; do\n'
        '  case "$p" in -*) ;; *) dpkg -s "$p" >/dev/null;; esac; done; }\n'
    )
    sh(prelude + block, PIP_NO_INDEX="1", PIP_FIND_LINKS="/root/wheelhouse")


def platform_requests() -> list[dict[str, Any]]:
    if not PLATFORM_LOG.exists():
        return []
    lines = PLATFORM_LOG.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def send(to: str, subject: str, client: smtplib.SMTP | None = None) -> str:
    message = f"Subject: {subject}\r\nMessage-ID: <{secrets.token_hex(6)}@ci>\r\n\r\nbody\r\n"
    own = client is None
    smtp = client or smtplib.SMTP(*SMTP, timeout=10)
    try:
        smtp.ehlo_or_helo_if_needed()
        code, reply = smtp.mail("ci@example.com")
        if code != 250:
            raise CheckFailed(f"MAIL: {code} {reply!r}")
        code, reply = smtp.rcpt(to)
        if code != 250:
            raise CheckFailed(f"RCPT {to}: {code} {reply!r}")
        code, reply = smtp.data(message.encode())
        if code != 250:
            raise CheckFailed(f"DATA: {code} {reply!r}")
        queued = re.search(r"queued as (\S+)", reply.decode())
        return queued.group(1) if queued else ""
    finally:
        if own:
            smtp.quit()


def http_json(path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:8025{path}", timeout=5) as reply:
        return json.loads(reply.read())


def greets() -> bool:
    with smtplib.SMTP(*SMTP, timeout=5) as smtp:
        return smtp.noop()[0] == 250


def journal(since_cursor: str = "") -> str:
    after = f"--after-cursor='{since_cursor}'" if since_cursor else ""
    return sh(f"journalctl -u {UNIT} --no-pager -o cat {after}").stdout


def cursor() -> str:
    out = sh("journalctl -n 0 --show-cursor --no-pager", check=False).stdout
    found = re.search(r"-- cursor: (\S+)", out)
    return found.group(1) if found else ""


def report() -> int:
    failed = [name for name, ok, _ in RESULTS if not ok]
    print(f"{len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed", flush=True)
    if failed:
        print(sh(f"journalctl -u {UNIT} --no-pager -n 80", check=False).stdout, flush=True)
    return 1 if failed else 0
