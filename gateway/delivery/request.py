"""What a send-message request looks like on the wire and what the platform's reply means.

A request is made in two steps: at accept, the stored fields (gateway.message.mapping: text,
recipient, type, sender, ...); at send time, here, what depends on the running config — the
token that pays and the signed callback (`assemble`). Batches (batch.py) reuse both.

Pure functions, no HTTP: the parent process uses them without loading an HTTP client.
The platform documents exactly two replies: `{"type": "success", "id": ...}` and
`{"type": "error", "msg": ...}`. Everything else — a timeout, a reset, a 5xx, a 429, a 404, an
HTML error page, JSON of another shape — is retried, never taken as success; except a 2xx whose
body cannot be read at all (cut, too slow, too big, not UTF-8: the client decides), which means
the platform has the request, and is the unknown outcome, never sent again on its own.
"""

from __future__ import annotations

import email.utils
import functools
import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, quote_plus

from gateway.config.model import Config, mask
from gateway.delivery.signing import callback_url, media_url
from gateway.delivery.tokens import token_for
from gateway.spool.media import IMAGE, marked
from gateway.spool.rows import Delivery

# The platform's names for the encodings it accepts, to Python codec names.
_CODECS = {
    **dict.fromkeys(("UTF16BE", "UTF-16BE", "UCS-2BE", "UCS2BE"), "utf-16-be"),
    **dict.fromkeys(("UTF16LE", "UTF-16LE", "UCS-2LE", "UCS2LE"), "utf-16-le"),
    "CP1251": "cp1251",
    "UTF-8": "utf-8",
}
_TEXT_FIELDS = ("sent_text", "html_text")
_MAX_ERROR_TEXT = 300


@dataclass(frozen=True, slots=True)
class Outcome:
    # unknown: perhaps sent; from a batch's undocumented reply (batch.py) or a 2xx unread.
    kind: Literal["sent", "refused", "retry", "unknown"]
    platform_id: str | None = None
    detail: str = ""
    retry_after: float | None = None
    # For the operator, from the client: the platform answered a 4xx but 429, which says our
    # configuration (api.base_url, api.token) is wrong; what to check. /healthz shows it.
    config_error: str = ""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One delivery's request as it goes out: every form field but the token, and the token."""

    delivery: Delivery
    fields: Mapping[str, str]
    token: str = field(repr=False)


def assemble(delivery: Delivery, config: Config) -> Outgoing:
    """The request for a delivery now: its stored fields, the signed callback if the status
    side is public, and the token of the user who sent it (else api.token), from the running
    config, so a reload or a rotated token applies to mail already queued."""
    fields = dict(delivery.request)
    http = config.http
    if http is not None and http.callback_url:
        fields["callback"] = callback_url(
            http.callback_url, http.callback_secret.reveal(), delivery.id, delivery.queue_id
        )
    picture_url(fields, delivery.queue_id, config)
    return Outgoing(delivery, fields, token_for(config, delivery.auth_user))


def picture_url(fields: dict[str, str], queue_id: str, config: Config) -> None:
    """The message's picture (a stored marker, gateway.spool.media) as the URL the platform
    fetches, made from the running http.public_url; without one, no `image` is sent."""
    extension = marked(fields.get(IMAGE))
    if extension is None:
        return
    http = config.http
    if http is None or not http.public_url:
        del fields[IMAGE]
        return
    fields[IMAGE] = media_url(http.public_url, http.callback_secret.reveal(), queue_id, extension)


def codec_for(request: Mapping[str, str]) -> str:
    """The Python codec of the charset a request declares (UTF-8 when it declares none)."""
    return _CODECS.get(request.get("charset", "UTF-8"), "utf-8")


def encode_form(request: Mapping[str, str], token: str) -> bytes:
    """Form-encode a request; the text fields in the charset the request declares."""
    codec = codec_for(request)
    pairs = [("token", token), *request.items()]
    return "&".join(
        quote_plus(name) + "=" + form_value(value, codec if name in _TEXT_FIELDS else "utf-8")
        for name, value in pairs
    ).encode("ascii")


def form_value(value: str, codec: str) -> str:
    """One value, percent-encoded from its bytes in `codec`.

    ASCII in an ASCII-compatible codec takes quote_plus. Anything else has every octet
    escaped, which form decoding reads the same way (any %XX is that byte) and which runs at C
    speed: quote_plus's per-byte Python loop was an eighth of the sender process's CPU for a
    Cyrillic text, where nearly every byte is escaped anyway.
    """
    if value.isascii() and codec in ("utf-8", "cp1251"):
        return quote_plus(value)
    data = value.encode(codec, "replace")
    return "%" + data.hex("%").upper() if data else ""


def masked_request(request: Mapping[str, str], token: str) -> dict[str, str]:
    """The request as a person may see it: token masked."""
    return {"token": mask(token), **request}


def classify(
    status: int, body: bytes, headers: Mapping[str, str], now: float, secret: str = ""
) -> Outcome:
    """What a reply means; `secret` (the request's token) is masked in any text it echoes,
    before that text is shortened, so a cut cannot leave half a token."""
    if status == 429 or status >= 500:
        return overloaded(status, headers, now)
    reply = json_reply(body)
    if isinstance(reply, dict):
        kind = reply.get("type")
        if kind == "success" and isinstance(reply.get("id"), str | int) and reply["id"] != "":
            return Outcome("sent", platform_id=str(reply["id"]))
        if kind == "error":
            return refused(reply, secret)
    return Outcome("retry", detail=unrecognised(status, body, secret))


def overloaded(status: int, headers: Mapping[str, str], now: float) -> Outcome:
    """A 429 or 5xx: tried again, after the Retry-After the platform asks for if any."""
    return Outcome(
        "retry",
        detail=f"HTTP {status}",
        retry_after=retry_after_seconds(headers.get("retry-after"), now),
    )


def json_reply(body: bytes) -> object:
    try:
        reply: object = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return reply


def refused(reply: Mapping[str, object], secret: str) -> Outcome:
    text = mask_secret(str(reply.get("msg", "")), secret)
    return Outcome("refused", detail=short(text) or "error")


def unrecognised(status: int, body: bytes, secret: str) -> str:
    text = mask_secret(body.decode("utf-8", "replace"), secret)
    return f"HTTP {status}, unrecognised reply: {short(text)!r}"


def mask_secret(text: str, secret: str) -> str:
    """`text` with `secret` masked in every spelling an echo of the request can give it."""
    if not secret:
        return text
    return _spellings(secret).sub(mask(secret), text)


@functools.lru_cache(maxsize=64)
def _spellings(secret: str) -> re.Pattern[str]:
    # Raw; form-encoded as we send it (a `/+=` token is all escapes there) and as other
    # encoders write it; JSON- and HTML-escaped. Case-blind for %2f against %2F (masking a
    # look-alike too is harmless).
    forms = {
        secret,
        form_value(secret, "utf-8"),
        quote_plus(secret),
        quote(secret),
        quote(secret, safe=""),
        html.escape(secret),
    }
    forms |= {json.dumps(form)[1:-1] for form in list(forms)}
    forms |= {form.replace("/", "\\/") for form in list(forms)}  # JSON's optional \/
    alternatives = sorted(forms, key=len, reverse=True)
    return re.compile("|".join(re.escape(form) for form in alternatives), re.IGNORECASE)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "²": str.isdigit takes any Unicode digit
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


def short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_TEXT else text[:_MAX_ERROR_TEXT] + "…"


def config_hint(base_url: str, status: int) -> str:
    """What an operator should check when the platform answers `status` (a 4xx but 429)."""
    if status in (401, 403):
        return "check api.token (the platform does not accept it)"
    if status == 413:
        return "the platform refuses a request this big"
    if base_url.rstrip("/").endswith(("/send-message", "/send-list-messages")):
        return (
            "check api.base_url: it is the API's base (…/api/v1/bulk); /send-message is"
            " appended to it"
        )
    if status in (404, 405):
        return "check api.base_url (the API's base, e.g. https://…/api/v1/bulk)"
    return "check api.base_url and api.token"
