"""`smtp2pulse` on the command line; exit codes as the contract gives them."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

from gateway import preview_cli, queue_cli
from gateway.app import serve
from gateway.config.access import policy_for
from gateway.config.loader import DEFAULT_PATH, load_config
from gateway.config.model import Config, Listener
from gateway.errors import ConfigError, SpoolError
from gateway.logs import setup_logging
from gateway.loops import loop_factory
from gateway.smtp.passwords import hash_password
from gateway.spool.backends import describe

EX_OK, EX_FAIL, EX_REFUSED, EX_CONFIG = 0, 1, 2, 78
EX_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a tool SIGPIPE ended


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging("debug" if getattr(args, "verbose", False) else "info")
    try:
        result: int = args.run(args)
        sys.stdout.flush()  # here, where a closed pipe can still be caught, not at exit
        return result
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `queue list | head`: the reader has all it wanted. Quietly, as `cat` would end; what
        # is still buffered goes nowhere, so the flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EX_BROKEN_PIPE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smtp2pulse", description="SMTP-to-API gateway for the Pulse platform"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, run: Callable[[argparse.Namespace], int], helptext: str, config: bool = True
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=helptext, description=helptext)
        if config:
            sub.add_argument(
                "-c",
                "--config",
                default=os.environ.get("SMTP2PULSE_CONFIG", DEFAULT_PATH),
                help="config file (default: $SMTP2PULSE_CONFIG or %(default)s)",
            )
        sub.set_defaults(run=run)
        return sub

    serve_cmd = command("serve", _serve, "run the daemon in the foreground")
    serve_cmd.add_argument(
        "--dry-run",
        action="store_true",
        help="accept and spool as usual, log API requests instead of sending",
    )
    serve_cmd.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    check = command("check-config", _check_config, "validate a config file")
    check.add_argument("--dry-run", action="store_true", help="validate as serve --dry-run would")
    preview_cli.add_arguments(
        command("preview", preview_cli.run, "print the API request(s) a message would become")
    )
    queue_cli.add_arguments(command("queue", queue_cli.run, "inspect and manage the spool"))
    command(
        "hash-password",
        _hash_password,
        "print a hash for smtp.auth.users.*.password_hash",
        config=False,
    )
    return parser


def _serve(args: argparse.Namespace) -> int:
    try:
        # Read before the loop exists: the config chooses which loop it is.
        config = load_config(args.config, dry_run=args.dry_run)
        with asyncio.Runner(loop_factory=loop_factory(config.event_loop)) as runner:
            return runner.run(
                serve(args.config, dry_run=args.dry_run, verbose=args.verbose, config=config)
            )
    except (SpoolError, OSError) as exc:
        logging.getLogger("smtp2pulse").error("cannot start: %s", exc)
        return EX_FAIL


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config, dry_run=args.dry_run)
    print(f"{args.config}: valid")
    smtp = config.smtp
    print(
        f"  SMTP (hostname {smtp.hostname}, max {smtp.max_message_size} bytes,"
        f" {smtp.max_recipients} recipients):"
    )
    for listener in (*smtp.listen, *(smtp.tls.implicit_listen if smtp.tls else ())):
        print(f"    {listener}: {_policy_summary(listener, config)}")
    if smtp.auth is not None:
        print(f"  SMTP AUTH users: {', '.join(sorted(smtp.auth.users)) or 'none'}")
    print(f"  platform: {config.api.send_url}{' (dry run)' if config.api.dry_run else ''}")
    print(f"  spool: {describe(config.spool)}")
    if config.http is not None:
        print(
            f"  HTTP status: {config.http.listen}"
            + (
                f", callbacks via {config.http.callback_url}"
                if config.http.callback_url
                else ", no callbacks (http.public_url not set)"
            )
        )
    if config.bounces.enabled:
        print(f"  bounces: to senders through {config.bounces.relay}")
    for domain in config.domains.values():
        details = ", ".join(f"{k}={v}" for k, v in domain.fields.items())
        print(
            f"  domain {domain.name}: type {domain.type}, recipient {domain.recipient}"
            + (f", {details}" if details else "")
            + (f", pictures up to {domain.images_max_size} bytes" if domain.images else "")
        )
    for number, route in enumerate(config.routes, 1):
        match = ", ".join(f"{key} {text!r}" for key, text in route.match.texts.items())
        print(f"  route {number} {route.name}: {match} -> {route.action}")
    return EX_OK


def _policy_summary(listener: Listener, config: Config) -> str:
    policy = policy_for(listener, config.smtp)
    parts = [
        "SMTPS"
        if policy.implicit_tls
        else "STARTTLS required"
        if policy.require_starttls
        else "STARTTLS offered"
        if config.smtp.tls
        else "plain"
    ]
    parts.append(
        "AUTH required"
        if policy.require_auth
        else "AUTH optional"
        if config.smtp.auth
        else "no AUTH"
    )
    if config.smtp.tls:
        parts.append(f"TLS {config.smtp.tls.min_version}+")
    return ", ".join(parts)


def _hash_password(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return EX_FAIL
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("empty password", file=sys.stderr)
        return EX_FAIL
    print(hash_password(password))
    return EX_OK
