"""`smtp2pulse` on the command line; exit codes as the contract gives them."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from gateway.app import SpoolLocked, serve
from gateway.config.access import policy_for
from gateway.config.loader import DEFAULT_PATH, Config, Listener, load_config
from gateway.delivery.request import masked_request
from gateway.errors import ConfigError, Refusal, SpoolError
from gateway.logs import setup_logging
from gateway.loops import loop_factory
from gateway.message.mapping import resolve_recipient
from gateway.message.prepare import prepare
from gateway.smtp.passwords import hash_password
from gateway.smtp.replies import reply_for
from gateway.spool import admin
from gateway.spool.backends import make_spool
from gateway.spool.interface import SpoolInterface

EX_OK, EX_FAIL, EX_REFUSED, EX_CONFIG = 0, 1, 2, 78
T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging("debug" if getattr(args, "verbose", False) else "info")
    try:
        result: int = args.run(args)
        return result
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smtp2pulse",
                                     description="SMTP-to-API gateway for the Pulse platform")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], helptext: str,
                config: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=helptext, description=helptext)
        if config:
            sub.add_argument("-c", "--config", default=os.environ.get("SMTP2PULSE_CONFIG",
                                                                      DEFAULT_PATH),
                             help="config file (default: $SMTP2PULSE_CONFIG or %(default)s)")
        sub.set_defaults(run=run)
        return sub

    serve_cmd = command("serve", _serve, "run the daemon in the foreground")
    serve_cmd.add_argument("--dry-run", action="store_true",
                           help="accept and spool as usual, log API requests instead of sending")
    serve_cmd.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    check = command("check-config", _check_config, "validate a config file")
    check.add_argument("--dry-run", action="store_true", help="validate as serve --dry-run would")
    preview = command("preview", _preview, "print the API request(s) a message would become")
    preview.add_argument("--to", action="append", required=True, metavar="ADDR",
                         help="envelope recipient (may be repeated)")
    preview.add_argument("--from", dest="mail_from", default="", metavar="ADDR",
                         help="envelope sender")
    preview.add_argument("message", nargs="?", help="RFC 5322 message file (default: stdin)")
    queue = command("queue", _queue, "inspect and manage the spool")
    actions = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="messages with deliveries still to do")
    listing.add_argument("--all", action="store_true", help="include finished messages")
    for name, helptext in (("show", "a message with its whole history"),
                           ("retry", "send a message's unfinished or failed deliveries now"),
                           ("drop", "remove a message and its deliveries from the spool")):
        actions.add_parser(name, help=helptext).add_argument("queue_id", metavar="ID")
    command("hash-password", _hash_password, "print a hash for smtp.auth.users.*.password_hash",
            config=False)
    return parser


def _serve(args: argparse.Namespace) -> int:
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(serve(args.config, dry_run=args.dry_run, verbose=args.verbose))
    except (SpoolLocked, SpoolError, OSError) as exc:
        logging.getLogger("smtp2pulse").error("cannot start: %s", exc)
        return EX_FAIL


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config, dry_run=args.dry_run)
    print(f"{args.config}: valid")
    smtp = config.smtp
    print(f"  SMTP (hostname {smtp.hostname}, max {smtp.max_message_size} bytes,"
          f" {smtp.max_recipients} recipients):")
    for listener in (*smtp.listen, *(smtp.tls.implicit_listen if smtp.tls else ())):
        print(f"    {listener}: {_policy_summary(listener, config)}")
    if smtp.auth is not None:
        print(f"  SMTP AUTH users: {', '.join(sorted(smtp.auth.users)) or 'none'}")
    print(f"  platform: {config.api.send_url}{' (dry run)' if config.api.dry_run else ''}")
    print(f"  spool: {config.spool.path}")
    if config.http is not None:
        print(f"  HTTP status: {config.http.listen}"
              + (f", callbacks via {config.http.callback_url}" if config.http.callback_url
                 else ", no callbacks (http.public_url not set)"))
    if config.bounces.enabled:
        print(f"  bounces: to senders through {config.bounces.relay}")
    for domain in config.domains.values():
        details = ", ".join(f"{k}={v}" for k, v in domain.fields.items())
        print(f"  domain {domain.name}: type {domain.type}, recipient {domain.recipient}"
              + (f", {details}" if details else ""))
    return EX_OK


def _policy_summary(listener: Listener, config: Config) -> str:
    policy = policy_for(listener, config.smtp)
    parts = ["SMTPS" if policy.implicit_tls else
             "STARTTLS required" if policy.require_starttls else
             "STARTTLS offered" if config.smtp.tls else "plain"]
    parts.append("AUTH required" if policy.require_auth else
                 "AUTH optional" if config.smtp.auth else "no AUTH")
    if config.smtp.tls:
        parts.append(f"TLS {config.smtp.tls.min_version}+")
    return ", ".join(parts)


def _preview(args: argparse.Namespace) -> int:
    config = load_config(args.config, dry_run=True)
    if args.message:
        with open(args.message, "rb") as handle:
            raw = handle.read()
    else:
        raw = sys.stdin.buffer.read()
    try:
        requests = _preview_requests(config, raw, args.to, args.mail_from)
    except Refusal as refusal:
        print(reply_for(refusal), file=sys.stderr)
        return EX_REFUSED
    json.dump(requests, sys.stdout, ensure_ascii=False, indent=2)
    print()
    return EX_OK


def _preview_requests(config: Config, raw: bytes, recipients: list[str], mail_from: str
                      ) -> list[dict[str, object]]:
    # As the daemon does: each recipient resolved in envelope order, then the one `prepare`.
    resolved = [resolve_recipient(address, config) for address in recipients]
    prepared = prepare(raw, resolved, mail_from, config)
    return [{"method": "POST", "url": config.api.send_url,
             "form": masked_request(delivery.request, config.api.token.reveal())}
            for delivery in prepared.deliveries]


def _queue(args: argparse.Namespace) -> int:
    config = load_config(args.config, dry_run=True)
    if not config.spool.path.exists():
        print(f"no spool at {config.spool.path}", file=sys.stderr)
        return EX_FAIL
    return _with_spool(config, lambda spool: _queue_action(spool, args))


async def _queue_action(spool: SpoolInterface, args: argparse.Namespace) -> int:
    if args.action == "list":
        messages = await admin.list_messages(spool, include_finished=args.all)
        for m in messages:
            states = ",".join(f"{state}:{count}" for state, count in sorted(m.states.items()))
            print(f"{m.id}  {_when(m.received_at)}  <{m.mail_from}>  {states}  "
                  f"{' '.join(m.recipients)}")
        print(f"{len(messages)} messages", file=sys.stderr)
        return EX_OK
    if args.action == "show":
        detail = await admin.show_message(spool, args.queue_id)
        if detail is None:
            return _not_found(args.queue_id)
        json.dump(admin.as_jsonable(detail), sys.stdout, ensure_ascii=False, indent=2)
        print()
        return EX_OK
    if args.action == "retry":
        count = await admin.retry_message(spool, args.queue_id)
        if count is None:
            return _not_found(args.queue_id)
        print(f"{args.queue_id}: {count} deliveries queued for a new attempt")
        return EX_OK
    if not await admin.drop_message(spool, args.queue_id):
        return _not_found(args.queue_id)
    print(f"{args.queue_id}: dropped")
    return EX_OK


def _not_found(queue_id: str) -> int:
    print(f"{queue_id}: no such message", file=sys.stderr)
    return EX_FAIL


def _with_spool(config: Config, action: Callable[[SpoolInterface], Awaitable[int]]) -> int:
    async def run() -> int:
        spool = make_spool(config.spool)
        await spool.start(recover=False)  # the daemon may be running
        try:
            return await action(spool)
        finally:
            await spool.stop()
    try:
        return asyncio.run(run())
    except SpoolError as exc:
        print(f"spool: {exc}", file=sys.stderr)
        return EX_FAIL


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


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
