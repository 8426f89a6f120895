"""`smtp2pulse queue`: the spool from the command line, like `mailq` and `postcat`.

`list` says in its header line what it shows: by default what is still to be sent; with --all
or any filter, every delivery the spool keeps. Runs beside a live daemon (see spool/queue_view.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

from gateway import shown
from gateway.config.loader import load_config
from gateway.config.model import Config
from gateway.config.units import parse_duration
from gateway.errors import SpoolError
from gateway.spool.backends import describe, make_spool
from gateway.spool.interface import SpoolInterface
from gateway.spool.rows import NewDelivery, Search
from gateway.spool.states import SHOWN, State

EX_OK, EX_FAIL, EX_USAGE = 0, 1, 2
LIST_LIMIT = 1000


def add_arguments(queue: argparse.ArgumentParser) -> None:
    actions = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        help="deliveries still to be sent (or, with --all or a filter, every one the spool keeps)",
    )
    listing.add_argument("--all", action="store_true", help="include finished deliveries")
    listing.add_argument(
        "--to",
        metavar="RECIPIENT",
        help="as written in RCPT TO (89001234567@sms.local) or as sent (79001234567)",
    )
    listing.add_argument("--since", metavar="DURATION", help="received in the last 30m, 2h, 1d…")
    listing.add_argument("--state", choices=[str(state) for state in SHOWN])
    listing.add_argument("--json", action="store_true", help="one JSON array")
    show = actions.add_parser("show", help="a message with its whole history")
    show.add_argument("queue_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="as JSON")
    for name, helptext in (
        ("retry", "send a message's unfinished or failed deliveries now"),
        ("drop", "remove a message and its deliveries from the spool"),
    ):
        actions.add_parser(name, help=helptext).add_argument("queue_id", metavar="ID")


def run(args: argparse.Namespace) -> int:
    # The spool is all it needs: run by the operator, not the service, it can read neither the
    # service's credentials nor its token files.
    config = load_config(args.config, dry_run=True, secrets=False)
    search = None
    if args.action == "list":
        try:
            search = _search(args)
        except ValueError as exc:
            print(f"--since: {exc}", file=sys.stderr)
            return EX_USAGE
    if config.spool.url is None and not config.spool.path.exists():
        print(
            f"no spool at {config.spool.path}: the daemon makes it when it first starts "
            f"(spool.path in {args.config})",
            file=sys.stderr,
        )
        return EX_FAIL
    return _with_spool(config, lambda spool: _action(spool, args, search))


def _search(args: argparse.Namespace) -> Search:
    since = None if args.since is None else time.time() - parse_duration(args.since)
    filtered = args.to is not None or since is not None or args.state is not None
    return Search(
        to=args.to,
        since=since,
        state=args.state,
        pending_only=not (args.all or filtered),
        limit=LIST_LIMIT,
    )


def _header(args: argparse.Namespace, count: int) -> str:
    noun = "delivery" if count == 1 else "deliveries"
    what = (
        f"{noun} still to be sent or settled (queued, sending or unconfirmed)"
        if not (args.all or args.to or args.since or args.state)
        else noun
    )
    filters = [
        f"to {args.to}" if args.to else "",
        f"received in the last {args.since}" if args.since else "",
        f"{args.state}" if args.state else "",
    ]
    named = " ".join(f for f in filters if f)
    more = " (the newest; narrow with --to/--since/--state)" if count >= LIST_LIMIT else ""
    hint = "; --all shows finished ones too" if what != noun else ""
    return f"{count} {what}{', ' + named if named else ''}, oldest first{more}{hint}"


async def _action(spool: SpoolInterface, args: argparse.Namespace, search: Search | None) -> int:
    if search is not None:
        lines = list(reversed(await spool.find_deliveries(search)))
        if args.json:
            json.dump(
                [shown.line_json(line) for line in lines], sys.stdout, ensure_ascii=False, indent=2
            )
            print()
        else:
            print(_header(args, len(lines)))
            for line in lines:
                print(shown.line_text(line))
        return EX_OK
    if args.action == "show":
        detail = await spool.show_message(args.queue_id)
        if detail is None:
            return _not_found(args.queue_id)
        if args.json:
            json.dump(shown.detail_json(detail), sys.stdout, ensure_ascii=False, indent=2)
            print()
        else:
            print("\n".join(shown.detail_lines(detail)))
        return EX_OK
    if args.action == "retry":
        count = await spool.retry_message(args.queue_id)
        if count is None:
            return _not_found(args.queue_id)
        print(f"{args.queue_id}: {count} deliveries queued for a new attempt")
        if count == 0:
            detail = await spool.show_message(args.queue_id)
            held = [d for d in detail.deliveries if d.state == State.HELD] if detail else []
            if held:
                # A retry never sends past a limit (docs/operations.md): say what does.
                print(
                    f"{len(held)} held by a limit ({held[0].last_error}): they go when it has"
                    " room; raise it and reload to send them sooner, or use the status page's"
                    " 'Send now anyway'"
                )
        return EX_OK
    if not await spool.drop_message(args.queue_id):
        return _not_found(args.queue_id)
    print(f"{args.queue_id}: dropped")
    return EX_OK


def _not_found(queue_id: str) -> int:
    print(
        f"{queue_id}: no such message (queue list --all --to RECIPIENT finds one by recipient)",
        file=sys.stderr,
    )
    return EX_FAIL


def foresee(
    config: Config, deliveries: Sequence[NewDelivery]
) -> list[tuple[str, str] | None] | str:
    """What the daemon would decide now of each delivery (`preview`), looked up in the spool
    without changing it; or, as a str, why the spool was not asked."""
    if not any(d.fingerprint for d in deliveries):
        return [None] * len(deliveries)
    if config.spool.url is None and not config.spool.path.exists():
        return f"no spool at {config.spool.path} yet"

    async def go() -> list[tuple[str, str] | None]:
        spool = make_spool(config.spool)
        await spool.start(recover=False)  # the daemon may be running
        try:
            return await spool.foresee(deliveries)
        finally:
            await spool.stop()

    try:
        return asyncio.run(go())
    except SpoolError as exc:
        return f"spool {describe(config.spool)} not reachable: {exc}"


def _with_spool(config: Config, action: Callable[[SpoolInterface], Awaitable[int]]) -> int:
    where = describe(config.spool)

    async def go() -> int:
        spool = make_spool(config.spool)
        await spool.start(recover=False)  # the daemon may be running
        try:
            return await action(spool)
        finally:
            await spool.stop()

    try:
        return asyncio.run(go())
    except SpoolError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            print(
                f"spool {where} is locked: another process holds a write on it "
                "(more than 5 seconds); try again",
                file=sys.stderr,
            )
        else:
            print(f"spool {where}: {exc}", file=sys.stderr)
        return EX_FAIL
