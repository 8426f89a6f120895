"""A platform's reply body, read within a bound.

A reply is a JSON object, or for a batch a list of one per message: a few tens of KiB. A broken
or hostile platform can send 300 MB, an endless chunked body or a gzip bomb; the client feeds
what arrives to a `Body`, which keeps at most MAX_REPLY_BYTES after Content-Encoding is undone
(and inflates no further), and raises Unreadable past it. Pure: no HTTP library here.
"""

from __future__ import annotations

import zlib

from gateway.delivery.request import short

MAX_REPLY_BYTES = 1 << 20


class Unreadable(Exception):
    """The reply's body could not be read: too big, cut, or in an encoding we cannot undo."""


class Body:
    """A reply body read up to MAX_REPLY_BYTES, decompressed as it comes with a bounded output
    (a gzip bomb inflates no further than the cap)."""

    def __init__(self, encoding: str, cap: int = MAX_REPLY_BYTES) -> None:
        encoding = encoding.strip().lower()
        self._cap = cap
        self._parts: list[bytes] = []
        self._size = 0
        self._inflate: zlib._Decompress | None = None
        if encoding in ("gzip", "x-gzip"):
            self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._inflate = zlib.decompressobj(zlib.MAX_WBITS)
        elif encoding not in ("", "identity"):
            raise Unreadable(f"Content-Encoding {short(encoding)!r}")

    def feed(self, data: bytes) -> None:
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data, self._cap - self._size + 1)
            except zlib.error as exc:
                raise Unreadable(f"bad compressed body ({exc})") from exc
        self._size += len(data)
        if self._size > self._cap:
            raise Unreadable(f"reply over {self._cap >> 10} KiB")
        self._parts.append(data)

    def content(self) -> bytes:
        return b"".join(self._parts)


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
