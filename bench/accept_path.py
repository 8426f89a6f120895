"""Micro-benchmark of the end-of-DATA code: µs per message for each step of message.prepare.

The SMTP bench (run.py) says how many messages a second the gateway takes; this says where the
CPU of one accept goes, without sockets, so that a change to parsing or text hygiene can be
measured on its own. The machine is shared, so a number means little alone: by default the
script times this tree and a baseline commit (the merge base with main) in alternating
subprocesses, several rounds, and prints medians side by side with their ratio.

    python bench/accept_path.py                    # this tree vs the merge base with main
    python bench/accept_path.py --baseline HEAD~2  # vs any commit
    python bench/accept_path.py --no-baseline      # this tree only
    python bench/accept_path.py --rounds 7 --iterations 2000

Steps, per message (all with the daemon's own functions and a config like bench/run.py's):
  auto_generated  admission.auto_generated(raw), the header scan before parsing
  parse_message   parse.parse_message(raw, "cp1251")
  clean_text      text.clean_text on the body as the parser decodes it (CRLF line breaks)
  build_request   mapping.build_request for one recipient (render_text and clean_text inside)
  prepare         prepare() with one recipient: parse, map, the requests to store
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

from loadgen import RUSSIAN, body_text

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("auto_generated", "parse_message", "clean_text", "build_request", "prepare")


# --- messages --------------------------------------------------------------------------------


def wrapped(size: int, codec: str) -> str:
    """About `size` encoded bytes of Russian text, wrapped at ~72 characters (as loadgen's)."""
    return body_text(RUSSIAN, size, codec)


def crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


def envelope_headers(subject: str) -> str:
    return (
        "From: CRM Robot <crm@corp.example>\r\nTo: 79001234567@sms.local\r\n"
        f"Subject: {subject}\r\nMessage-ID: <4217@corp.example>\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0300\r\n"
    )


def messages() -> dict[str, tuple[bytes, str]]:
    """name -> (raw message, the body text as the parser hands it to clean_text)."""
    body = wrapped(1024, "utf-8")
    subject = "=?utf-8?B?" + base64.b64encode("Заказ № 4217 готов".encode()).decode() + "?="
    utf8 = (
        (
            envelope_headers(subject) + "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        ).encode()
        + crlf(body).encode()
        + b"\r\n"
    )

    legacy_body = wrapped(1024, "cp1251")
    cp1251 = (
        envelope_headers("Заказ № 4217 готов").encode("cp1251")
        + b"\r\n"
        + crlf(legacy_body).encode("cp1251")
        + b"\r\n"
    )

    html = "<html><body><p>" + body.replace("\n", "<br>\n") + "</p></body></html>"
    alt = EmailMessage()
    alt["From"] = "CRM Robot <crm@corp.example>"
    alt["To"] = "79001234567@sms.local"
    alt["Subject"] = "Заказ № 4217 готов"
    alt.set_content(body)
    alt.add_alternative(html, subtype="html")
    alternative = alt.as_bytes(policy=SMTP)

    html_only = (
        envelope_headers(subject) + "MIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode() + crlf(html).encode()
    return {
        "utf8_plain": (utf8, crlf(body) + "\r\n"),
        "cp1251_legacy": (cp1251, crlf(legacy_body) + "\r\n"),
        "alternative": (alternative, crlf(body) + "\r\n"),
        "html_only": (html_only, crlf(html)),
    }


# --- timing (runs in the worker, against whichever `gateway` is on sys.path) -----------------


def per_call_us(call: Callable[[], Any], iterations: int) -> float:
    started = time.perf_counter()
    for _ in range(iterations):
        call()
    return (time.perf_counter() - started) / iterations * 1e6


def worker(iterations: int, repeats: int) -> dict[str, Any]:
    import gateway

    try:
        make_steps = _packaged_steps()
    except ImportError:  # a baseline from before gateway/ became packages (fa6d3d0 and older)
        make_steps = _flat_steps()
    results: dict[str, Any] = {"gateway": str(Path(gateway.__file__).resolve().parent)}
    for name, (raw, body) in messages().items():
        steps = make_steps(raw, body)
        results[name] = {
            step: [per_call_us(call, iterations) for _ in range(repeats)]
            for step, call in steps.items()
        }
    return results


Steps = Callable[[bytes, str], dict[str, Callable[[], Any]]]
CONFIG = {"api": {"token": "t"}, "domains": {"sms.local": {"type": "sms", "sender": "Bench"}}}


def _packaged_steps() -> Steps:
    from gateway.config.loader import parse_config
    from gateway.config.recipients import resolve_recipients
    from gateway.message.mapping import build_request
    from gateway.message.parse import parse_message
    from gateway.message.prepare import prepare
    from gateway.message.text import clean_text
    from gateway.smtp import admission

    config = parse_config(CONFIG, env={})
    [recipient] = resolve_recipients("79001234567@sms.local", config)
    domain = config.domains[recipient.domain]

    def steps(raw: bytes, body: str) -> dict[str, Callable[[], Any]]:
        parsed = parse_message(raw, "cp1251")
        return {
            "auto_generated": lambda: admission.auto_generated(raw),
            "parse_message": lambda: parse_message(raw, "cp1251"),
            "clean_text": lambda: clean_text(body),
            "build_request": lambda: build_request(parsed, recipient, domain, "crm@corp.example"),
            "prepare": lambda: prepare(raw, [recipient], "crm@corp.example", config),
        }

    return steps


def _flat_steps() -> Steps:
    """The same steps in the flat layout (gateway/*.py), where Handler._prepare was `prepare`."""
    import asyncio
    import importlib

    from aiosmtpd.smtp import Envelope, Session

    def module(name: str) -> Any:
        return importlib.import_module(f"gateway.{name}")  # names that exist only there

    hygiene, mapping, parse, text = (module(n) for n in ("hygiene", "mapping", "parse", "text"))
    config = module("config").parse_config(CONFIG, env={})
    recipient = mapping.resolve_recipient("79001234567@sms.local", config)
    domain = config.domains[recipient.domain]
    handler = module("smtp").Handler(None, lambda: None, None)  # _prepare uses neither
    session = Session(asyncio.new_event_loop())
    # aiosmtpd annotates peer as a str; at run time it is the transport's (host, port).
    session.peer = ("192.0.2.10", 40000)  # type: ignore[assignment]
    session.host_name = "crm.corp.example"
    envelope = Envelope()
    envelope.mail_from, envelope.rcpt_tos = "crm@corp.example", ["79001234567@sms.local"]

    def steps(raw: bytes, body: str) -> dict[str, Callable[[], Any]]:
        parsed = parse.parse_message(raw, "cp1251")
        return {
            "auto_generated": lambda: hygiene.auto_generated(raw),
            "parse_message": lambda: parse.parse_message(raw, "cp1251"),
            "clean_text": lambda: text.clean_text(body),
            "build_request": lambda: mapping.build_request(
                parsed, recipient, domain, "crm@corp.example"
            ),
            "prepare": lambda: handler._prepare(config, session, envelope, raw, []),
        }

    return steps


# --- the driver --------------------------------------------------------------------------------


def baseline_tree(ref: str, into: Path) -> Path:
    """The `gateway` package of commit `ref`, unpacked under `into`."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "gateway"], check=True, capture_output=True
    ).stdout
    tar = into / "gateway.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as unpacked:
        unpacked.extractall(into, filter="data")
    return into


def run_worker(tree: Path, iterations: int, repeats: int) -> dict[str, Any]:
    # PYTHONPATH comes before the editable install, so `import gateway` finds `tree`'s copy.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            "--iterations",
            str(iterations),
            "--repeats",
            str(repeats),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tree,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    if Path(result["gateway"]) != (tree / "gateway").resolve():
        raise SystemExit(f"worker imported {result['gateway']}, not {tree}/gateway")
    return result


def merge(into: dict[str, dict[str, list[float]]], result: dict[str, Any]) -> None:
    for name, steps in result.items():
        if name == "gateway":
            continue
        for step, samples in steps.items():
            into.setdefault(name, {}).setdefault(step, []).extend(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--baseline",
        default=None,
        help="commit to compare with (default: merge base of HEAD and main)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="time this tree only")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two trees")
    parser.add_argument("--iterations", type=int, default=1000, help="calls per timing")
    parser.add_argument("--repeats", type=int, default=3, help="timings per step and round")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.iterations, args.repeats)))
        return

    ref = None
    if not args.no_baseline:
        ref = (
            args.baseline
            or subprocess.run(
                ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
    new: dict[str, dict[str, list[float]]] = {}
    old: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="accept-bench-") as temp:
        old_tree = baseline_tree(ref, Path(temp)) if ref else None
        for round_ in range(args.rounds):
            # Alternate which goes first, so a neighbour's load drifting in or out hits both.
            order = [(ROOT, new), (old_tree, old)] if old_tree else [(ROOT, new)]
            for tree, into in order if round_ % 2 == 0 else reversed(order):
                if tree is not None:
                    merge(into, run_worker(tree, args.iterations, args.repeats))
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)

    samples = args.rounds * args.repeats
    print(
        f"µs per message, median of {samples} timings of {args.iterations} calls each"
        + (f"; baseline {ref[:12]}" if ref else "")
    )
    header = f"{'message':<15} {'step':<15} {'this tree':>10}"
    print(header + (f" {'baseline':>10} {'new/old':>8}" if ref else ""))
    for name, steps in new.items():
        for step in STEPS:
            now = statistics.median(steps[step])
            line = f"{name:<15} {step:<15} {now:>10.1f}"
            if ref:
                before = statistics.median(old[name][step])
                line += f" {before:>10.1f} {now / before:>8.2f}"
            print(line)


if __name__ == "__main__":
    main()
