"""The console's CSRF tokens: without a script, without a cookie.

A token is an HMAC of the client's address and the hour it was made in, keyed by a key derived
from the callback secret (the same in every gateway of a spool and across restarts, so a form
stays good behind a load balancer and over a reload). Every form of the page carries one in a
hidden field; a POST is done only if its token is one made for the address it comes from in this
hour or the one before. A page elsewhere that makes the operator's browser post to the console
cannot read the console's pages (the same-origin policy), so it has no token; a client in
another allowed network cannot use its own token from a different address. A POST whose Origin
is another site, or that the browser marks as cross-site (Sec-Fetch-Site), is refused before the
token is looked at. docs/security.md describes the scheme.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping

SLOT = 3600.0  # a token is good in the hour it was made and the next
_CONTEXT = b"smtp2pulse console csrf v1"


class Tokens:
    def __init__(self, secret: Callable[[], str], clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._clock = clock
        # Without a secret (never after start: the spool gives one) a key of this process only.
        self._fallback = secrets.token_bytes(32)

    def _key(self) -> bytes:
        secret = self._secret()
        if not secret:
            return self._fallback
        return hmac.new(secret.encode(), _CONTEXT, hashlib.sha256).digest()

    def _sign(self, client: str, slot: int) -> str:
        return hmac.new(self._key(), f"{client}|{slot}".encode(), hashlib.sha256).hexdigest()

    def token(self, client: str) -> str:
        return self._sign(client, int(self._clock() // SLOT))

    def valid(self, token: str, client: str) -> bool:
        slot = int(self._clock() // SLOT)
        return any(hmac.compare_digest(token, self._sign(client, s)) for s in (slot, slot - 1))


def cross_site(headers: Mapping[str, str], host: str) -> bool:
    """What a browser says of a request another site made it send.

    Sec-Fetch-Site, which every current browser sends and no page can forge, is taken as it
    stands: it is judged against the address the browser used, so it holds behind a reverse
    proxy that gives the gateway another Host. Without it (an older browser), the Origin must
    be this Host; "null" is an opaque origin (a sandboxed frame, a redirect across sites)."""
    fetch_site = headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")
    origin = headers.get("Origin")
    if origin is None:
        return False  # not a browser's form post: browsers send an Origin with every POST
    return origin == "null" or origin.split("://", 1)[-1] != host
