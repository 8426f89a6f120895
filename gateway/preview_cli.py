"""`smtp2pulse preview`: the API request(s) a message would become, as the daemon would make
them (routes, retransmissions, repeats, limits and pictures said), with nothing sent or stored."""

from __future__ import annotations

import argparse
import json
import sys

from gateway import queue_cli
from gateway.config.images import IMAGE_TYPES
from gateway.config.loader import load_config
from gateway.config.model import Config
from gateway.config.recipients import Recipient, resolve_recipients
from gateway.delivery.request import masked_request
from gateway.errors import BadRecipient, ConfigError, Refusal, RelayDenied
from gateway.message.cost import request_segments
from gateway.message.limit_preview import limit_verdicts
from gateway.message.prepare import prepare
from gateway.message.routing import takes_address
from gateway.smtp.replies import reply_for
from gateway.spool import NewPicture
from gateway.spool.media import IMAGE, marked

EX_OK, EX_REFUSED = 0, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--to",
        action="append",
        required=True,
        metavar="ADDR",
        help="envelope recipient (may be repeated)",
    )
    parser.add_argument(
        "--from", dest="mail_from", default="", metavar="ADDR", help="envelope sender"
    )
    parser.add_argument("message", nargs="?", help="RFC 5322 message file (default: stdin)")


def run(args: argparse.Namespace) -> int:
    masked_as = ""  # the token's own mask
    try:
        config = load_config(args.config, dry_run=True)
    except ConfigError:
        # The operator's shell may not read the service's token (a systemd credential, a file
        # only the service's user reads), and preview sends nothing: the config without its
        # secrets will do. A real mistake in the config is raised again by this load.
        config = load_config(args.config, dry_run=True, secrets=False)
        print("the token was not read here (preview needs none): shown masked", file=sys.stderr)
        masked_as = "not read"  # masked as any token is
    if args.message:
        with open(args.message, "rb") as handle:
            raw = handle.read()
    else:
        raw = sys.stdin.buffer.read()
    try:
        requests = requests_for(config, raw, args.to, args.mail_from, masked_as)
    except Refusal as refusal:
        print(reply_for(refusal), file=sys.stderr)
        return EX_REFUSED
    json.dump(requests, sys.stdout, ensure_ascii=False, indent=2)
    print()
    return EX_OK


def requests_for(
    config: Config, raw: bytes, recipients: list[str], mail_from: str, unread_token: str = ""
) -> list[dict[str, object]]:
    # As the daemon does: each recipient resolved in envelope order (an address only a route
    # names kept for routing), then the one `prepare`.
    resolved: list[Recipient] = []
    route_only: list[str] = []
    for address in recipients:
        try:
            resolved.extend(resolve_recipients(address, config))
        except (RelayDenied, BadRecipient):
            if not (config.routes and takes_address(config, address)):
                raise
            route_only.append(address)
    prepared = prepare(raw, resolved, mail_from, config, route_only=route_only)
    if prepared.route is not None:
        print(f"route {prepared.route}: {prepared.route_action}", file=sys.stderr)
    verdicts = queue_cli.foresee(config, prepared.deliveries)  # retransmission, repeat
    if isinstance(verdicts, str):
        print(f"retransmissions and repeats not checked: {verdicts}", file=sys.stderr)
        verdicts = [None] * len(prepared.deliveries)
    printed: list[dict[str, object]] = []
    routed = (
        {"route": {"name": prepared.route, "action": prepared.route_action}}
        if prepared.route is not None
        else {}
    )
    limits = limit_verdicts(config, prepared.deliveries)  # the spool's counts, if readable
    for delivery, verdict, limit in zip(prepared.deliveries, verdicts, limits, strict=True):
        if verdict is not None:  # what the spool would decide: nothing sent either way
            printed.append({"recipient": delivery.recipient, verdict[0]: verdict[1], **routed})
            continue
        if limit is not None:
            print(f"{delivery.recipient}: would be {limit}", file=sys.stderr)
        if delivery.suppressed is not None:  # kept by the daemon, but no request is made
            printed.append(
                {"recipient": delivery.recipient, "suppressed": str(delivery.suppressed), **routed}
            )
            continue
        form = masked_request(delivery.request, config.api.token.reveal() or unread_token)
        entry: dict[str, object] = {
            "method": "POST",
            "url": config.api.send_url,
            "form": form,
            **routed,
        }
        if limit is not None:
            entry["limit"] = limit
        sms = request_segments(delivery.request)
        if sms is not None:  # what it costs: the platform bills each part
            entry["sms"] = {"encoding": sms.encoding, "parts": sms.parts}
        entry.update(preview_picture(form, prepared.picture, config))
        printed.append(entry)
    return printed


def preview_picture(
    form: dict[str, str], picture: NewPicture | None, config: Config
) -> dict[str, object]:
    """The picture a request would send (its `image` as the URL it becomes, the queue id and
    signature left as placeholders), or why the message's picture is not sent."""
    if picture is None:
        return {}
    about = picture.about
    if about.problem is not None and form.get("type") in IMAGE_TYPES:
        return {"picture": {"not_sent": about.problem, "from": about.source}}
    extension = marked(form.get(IMAGE))
    if extension is None or about.problem is not None:
        return {}
    public = config.http.public_url if config.http is not None else None
    form[IMAGE] = f"{(public or '').rstrip('/')}/media/<queue id>/<signature>.{extension}"
    return {
        "picture": {
            "type": about.content_type,
            "bytes": about.size,
            "width": about.width,
            "height": about.height,
            "from": about.source,
        }
    }
