"""`routes`: an ordered list that chooses, per message, who gets a mail and how.

Each route is read and checked here once, at load: its globs and regular expressions compiled
with RE2 (google-re2), its `to:` addresses resolved as a RCPT TO would be (aliases included), and
what its `set:` makes of every served domain worked out in advance, so routing a message is
matching and lookups only (gateway.message.routing).

The patterns come from the config but run on hostile mail, so they go through RE2, whose
matching time is linear in the text: no pattern, however written, can stall the event loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import re2

from gateway.config import validation as v
from gateway.config.domains import MESSAGE_TYPES, template
from gateway.config.model import DomainConfig, Route, RouteMatch
from gateway.config.recipients import Recipient, resolve_recipients
from gateway.errors import Refusal

ROUTE_KEYS = {"name", "match", "to", "set", "drop"}
MATCH_KEYS = {"from", "to", "subject", "body", "headers"}
# The platform fields a route may set: enough to send a message elsewhere or otherwise, not a
# second domain. `text` is a template as a domain's is; `quiet_hours: false` sends at once.
SET_KEYS = {"type", "sender", "ttl", "text", "quiet_hours"}
MAX_ROUTES = 1000
# What one compiled pattern may use; RE2 refuses (a config error) a pattern that needs more.
MAX_PATTERN_MEMORY = 8 * 1024 * 1024
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # RE2 would print each bad pattern to stderr itself
    options.max_mem = MAX_PATTERN_MEMORY
    return options


def regex(value: Any) -> Any:
    """A regular expression in RE2 syntax, searched (not anchored) in a text."""
    pattern = v.text(value)
    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"{pattern!r} is not a regular expression RE2 takes: {reason}") from None


def glob(value: Any) -> Any:
    """An address glob (`*` any run, `?` one character), case-insensitive, whole address."""
    pattern = v.text(value).strip()
    if not pattern:
        raise ValueError("must be an address or a glob such as *@ups.corp.local")
    parts = [".*" if ch == "*" else "." if ch == "?" else re2.escape(ch) for ch in pattern]
    return re2.compile("(?is)^" + "".join(parts) + "$", _options())


class _Served:
    """The served domains as the recipient resolver asks for them."""

    def __init__(self, domains: Mapping[str, DomainConfig]) -> None:
        self.domains = domains

    def domain(self, name: str) -> DomainConfig | None:
        return self.domains.get(name.lower())


def parse_routes(
    value: Any, domains: Mapping[str, DomainConfig], problems: v.Problems
) -> tuple[Route, ...]:
    """The routes, in order, each checked; `to:` resolved against `domains`."""
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.add("routes", "must be a list of routes, each with name and match")
        return ()
    if len(value) > MAX_ROUTES:
        problems.add("routes", f"more than {MAX_ROUTES} routes")
        return ()
    routes: list[Route] = []
    names: set[str] = set()
    resolver = _Served(domains)
    for index, item in enumerate(value):
        path = f"routes[{index}]"
        if not isinstance(item, dict):
            problems.add(path, "must be a mapping with name, match and one of to, set, drop")
            continue
        route = _route(item, path, domains, resolver, problems)
        if route is None:
            continue
        if route.name in names:
            problems.add(f"{path}.name", f"{route.name!r} is the name of an earlier route")
            continue
        names.add(route.name)
        routes.append(route)
    return tuple(routes)


def _route(
    data: dict[str, Any],
    path: str,
    domains: Mapping[str, DomainConfig],
    resolver: _Served,
    problems: v.Problems,
) -> Route | None:
    first = len(problems.lines)
    v.keys(data, path, ROUTE_KEYS, problems)
    name = v.value(data, "name", path, _name, "", problems)
    if "name" not in data:
        problems.add(f"{path}.name", "is required (it names the route in logs and /metrics)")
    match = _match(data.get("match"), f"{path}.match", problems)
    drop = v.value(data, "drop", path, v.boolean, False, problems)
    targets = (
        _targets(data.get("to"), f"{path}.to", resolver, problems)
        if data.get("to") is not None
        else ()
    )
    settings = v.section(data, "set", problems, path)
    v.keys(settings, f"{path}.set", SET_KEYS, problems)
    if drop and (data.get("to") is not None or settings):
        problems.add(
            f"{path}.drop",
            "a route that drops a message neither sends it (to) nor changes it (set)",
        )
    if not drop and data.get("to") is None and not settings:
        problems.add(path, "needs what it does: to (recipients), set (fields) or drop: true")
    unserved = _unserved_domain(match, domains)
    if unserved and not drop and data.get("to") is None:
        # An address only a route names has no domain to send with: the route must say where
        # it goes (`set:` alone changes how recipients of served domains are sent to).
        problems.add(
            f"{path}.match.to",
            f"{unserved} is not a served domain: this route needs "
            "to (where such mail goes) or drop: true",
        )
    routed = _routed_domains(settings, f"{path}.set", domains, targets, problems)
    if len(problems.lines) > first or match is None:
        return None
    written = data["to"] if isinstance(data.get("to"), list) else [data.get("to")]
    return Route(
        name=name,
        match=match,
        to=tuple(str(t).strip() for t in written if t is not None),
        recipients=targets,
        drop=drop,
        set={key: _shown(settings[key]) for key in sorted(settings)},
        domains=routed,
    )


def _unserved_domain(match: RouteMatch | None, domains: Mapping[str, DomainConfig]) -> str:
    """The domain of `match.to` when it is one (no wildcard) that is not served, else ""."""
    written = match.texts.get("to", "") if match is not None else ""
    domain = written.rpartition("@")[2].strip().lower()
    if not domain or "*" in domain or "?" in domain or domain in domains:
        return ""
    return domain


def _name(value: Any) -> str:
    name = v.text(value).strip()
    if not name or not set(name.lower()) <= _NAME_CHARS or len(name) > 64:
        raise ValueError(f"{name!r} is not a route name (letters, digits, - _ ., at most 64)")
    return name


def _match(value: Any, path: str, problems: v.Problems) -> RouteMatch | None:
    if not isinstance(value, dict) or not value:
        problems.add(
            path,
            "is required: a mapping of from, to, subject, body and/or headers "
            "(every one given must hold)",
        )
        return None
    v.keys(value, path, MATCH_KEYS, problems)
    headers: list[tuple[str, Any]] = []
    raw_headers = v.section(value, "headers", problems, path)
    for header in raw_headers:
        name = str(header).strip().lower()
        if not name or any(ch <= " " or ch == ":" or ch > "~" for ch in name):
            problems.add(f"{path}.headers.{header}", "is not a header name")
            continue
        compiled = v.value(raw_headers, header, f"{path}.headers", regex, None, problems)
        if compiled is not None:
            headers.append((name, compiled))
    return RouteMatch(
        senders=v.value(value, "from", path, glob, None, problems),
        recipients=v.value(value, "to", path, glob, None, problems),
        subject=v.value(value, "subject", path, regex, None, problems),
        body=v.value(value, "body", path, regex, None, problems),
        headers=tuple(headers),
        texts={
            key: str(value[key])
            for key in ("from", "to", "subject", "body")
            if value.get(key) is not None
        }
        | {f"headers.{name}": str(p) for name, p in raw_headers.items()},
    )


def _targets(
    value: Any, path: str, resolver: _Served, problems: v.Problems
) -> tuple[Recipient, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        problems.add(path, "must name at least one recipient address")
        return ()
    targets: list[Recipient] = []
    for index, item in enumerate(items):
        at = f"{path}[{index}]" if isinstance(value, list) else path
        if isinstance(item, bool) or not isinstance(item, str | int):
            problems.add(at, "must be a recipient address")
            continue
        try:
            targets.extend(resolve_recipients(str(item).strip(), resolver))
        except Refusal as refusal:
            problems.add(at, f"{refusal.detail} (a route sends to served domains only)")
    return tuple(targets)


def _routed_domains(
    settings: dict[str, Any],
    path: str,
    domains: Mapping[str, DomainConfig],
    targets: tuple[Recipient, ...],
    problems: v.Problems,
) -> Mapping[str, DomainConfig]:
    """Each served domain as a message this route sends sees it (only those `set:` changes)."""
    if not settings:
        return {}
    kind = v.choice(settings, "type", path, MESSAGE_TYPES, "", problems) or None
    text = v.value(settings, "text", path, template, None, problems)
    sender = v.value(settings, "sender", path, v.text, None, problems)
    ttl = v.value(settings, "ttl", path, v.integer(1), None, problems)
    quiet = v.value(settings, "quiet_hours", path, v.boolean, True, problems)
    if settings.get("quiet_hours") is True:
        problems.add(
            f"{path}.quiet_hours",
            "only false (send at once) is a route's to set; quiet hours are the domain's",
        )
    if kind is not None:
        for target in targets:
            domain = domains[target.domain]
            if (kind == "email") != (domain.recipient == "email"):
                problems.add(
                    f"{path}.type",
                    f"{kind!r} does not fit {target.address} (a {domain.recipient} recipient)",
                )
                break
    routed: dict[str, DomainConfig] = {}
    for name, domain in domains.items():
        changed = domain
        if kind is not None and (kind == "email") == (domain.recipient == "email"):
            changed = dataclasses.replace(changed, type=kind)
        fields = dict(changed.fields)
        if sender is not None:
            fields["sender"] = sender
        if ttl is not None:
            fields["ttl"] = str(ttl)
        changed = dataclasses.replace(changed, fields=fields)
        if text is not None:
            changed = dataclasses.replace(changed, text=text)
        if not quiet:
            changed = dataclasses.replace(changed, quiet_hours=None)
        routed[name] = changed
    return routed


def _shown(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
