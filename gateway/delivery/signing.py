"""The signed `callback` URL each request carries, and the check of a signature that comes back.

The URL names the delivery it is about and carries an HMAC of that name, so a callback can only
speak for the delivery its URL was made for. Made here, where requests are assembled; checked by
the status side (gateway.status.callbacks), which imports it from here.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode


def sign(secret: str, delivery_id: int, queue_id: str) -> str:
    message = f"{delivery_id}:{queue_id}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def verify(secret: str, delivery_id: int, queue_id: str, signature: str) -> bool:
    return bool(secret) and hmac.compare_digest(
        sign(secret, delivery_id, queue_id), signature.encode("ascii", "replace").decode()
    )


def media_signature(secret: str, queue_id: str) -> str:
    """What a message's picture URL carries: an HMAC of its queue id, apart from callbacks'."""
    message = f"media:{queue_id}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def media_url(public_url: str, secret: str, queue_id: str, extension: str) -> str:
    """The `image` of a request that sends its message's picture (gateway.status.media)."""
    signature = media_signature(secret, queue_id)
    return f"{public_url.rstrip('/')}/media/{queue_id}/{signature}.{extension}"


def callback_url(base: str, secret: str, delivery_id: int, queue_id: str) -> str:
    """The request's `callback`: ours, signed, with the platform's placeholders left in."""
    query = urlencode({"d": delivery_id, "q": queue_id, "sig": sign(secret, delivery_id, queue_id)})
    return f"{base}?{query}&id={{id}}&status={{status}}"
