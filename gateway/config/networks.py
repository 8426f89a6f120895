"""Is a client address inside the networks an operator allowed?"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d
    return address


def allowed(host: str | None, networks: Iterable[Network]) -> bool:
    """True when `networks` is empty (no restriction) or holds the host's address."""
    networks = tuple(networks)
    if not networks:
        return True
    address = client_address(host or "")
    return address is not None and any(address in network for network in networks)


def address_key(host: str, ipv6_prefix: int) -> str:
    """What per-address limits and the login block count a client as.

    One IPv6 host usually holds a whole /64 and can pick any address in it per connection, so
    IPv6 clients are counted per prefix; IPv4 clients (mapped ones too) per address."""
    address = client_address(host)
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address) if address is not None else host
