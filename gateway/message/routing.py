"""Routes at work: which route a message takes, and whom it then goes to, with which domain.

Run once per message, after DATA, on the parsed message (gateway.message.prepare), so the
daemon and `preview` route alike. The first route whose every condition holds decides, for the
envelope recipients it matched (all of them when it has no `match.to`); the others go as they
would without routes. The patterns are RE2 (gateway.config.routes): linear in the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config.model import Config, DomainConfig, Route, RouteMatch
from gateway.config.recipients import Recipient
from gateway.errors import NoRoute
from gateway.message.headers import header_text
from gateway.message.parse import ParsedMessage


@dataclass(frozen=True, slots=True)
class Target:
    """One person a message goes to, with the domain that renders it."""

    recipient: Recipient
    domain: DomainConfig | None  # None: an address only a dropping route named
    drop: bool = False
    via: str = ""  # the envelope address a route sent it on from


@dataclass(frozen=True, slots=True)
class Routing:
    route: Route | None  # the route the message took; None: no route matched
    targets: tuple[Target, ...]


def route_message(
    message: ParsedMessage,
    mail_from: str,
    recipients: Sequence[Recipient],
    route_only: Sequence[str],
    config: Config,
) -> Routing:
    """Where a message goes. `recipients` are the envelope's recipients of served domains (as
    resolved at RCPT), `route_only` the addresses accepted only because a route names them;
    raises NoRoute when one of those is left with no route to take it."""
    addresses = list(dict.fromkeys([r.address for r in recipients] + list(route_only)))
    for route in config.routes:
        matched = matched_addresses(
            route.match, message, mail_from, addresses, config.smtp.fallback_charset
        )
        if matched:
            return Routing(route, _targets(route, matched, recipients, route_only, config))
    if route_only:
        raise NoRoute(
            f"<{route_only[0]}>: no route takes this message, and the address "
            f"is not one served here"
        )
    return Routing(None, tuple(Target(r, config.domains[r.domain]) for r in recipients))


def matched_addresses(
    match: RouteMatch,
    message: ParsedMessage,
    mail_from: str,
    addresses: Sequence[str],
    fallback: str,
) -> list[str]:
    """The envelope addresses a route's conditions hold for: none when one fails."""
    if match.senders is not None and not any(
        sender and match.senders.search(sender) for sender in (mail_from, message.from_addr)
    ):
        return []
    if match.subject is not None and not match.subject.search(message.subject):
        return []
    if match.body is not None and not match.body.search(message.text):
        return []
    for name, pattern in match.headers:
        value = message.raw_headers.get(name)
        if value is None or not pattern.search(header_text(value, fallback)):
            return []
    if match.recipients is None:
        return list(addresses)
    return [address for address in addresses if match.recipients.search(address)]


def takes_address(config: Config, address: str) -> bool:
    """At RCPT: whether a route that sends or drops could take an address the domains refuse
    (a domain not served, or no valid recipient of its domain); the route's other conditions
    are only known after DATA."""
    return any(
        route.match.recipients is not None
        and (route.drop or route.recipients)
        and route.match.recipients.search(address)
        for route in config.routes
    )


def _targets(
    route: Route,
    matched: list[str],
    recipients: Sequence[Recipient],
    route_only: Sequence[str],
    config: Config,
) -> tuple[Target, ...]:
    chosen = set(matched)
    # A route that only sets fields has no domain to send an unserved address with.
    takes = route.drop or bool(route.recipients)
    left = [address for address in route_only if not takes or address not in chosen]
    if left:
        # Mail for an address only routes know, which this route does not take: refused as
        # mail to an unserved domain is, the whole message (one reply answers all of DATA).
        raise NoRoute(
            f"<{left[0]}>: route {route.name} does not take this recipient, and "
            f"the address is not one served here"
        )
    targets = [Target(r, config.domains[r.domain]) for r in recipients if r.address not in chosen]
    if route.drop:
        targets += [
            Target(r, route.domains.get(r.domain, config.domains[r.domain]), drop=True)
            for r in recipients
            if r.address in chosen
        ]
        targets += [
            Target(Recipient(a, a.rpartition("@")[2].lower(), ""), None, drop=True)
            for a in route_only
        ]
    elif route.recipients:
        via = ", ".join(matched)
        targets += [
            Target(r, route.domains.get(r.domain, config.domains[r.domain]), via=via)
            for r in route.recipients
        ]
    else:
        targets += [
            Target(r, route.domains[r.domain], via=r.address)
            for r in recipients
            if r.address in chosen
        ]
    return tuple(targets)
