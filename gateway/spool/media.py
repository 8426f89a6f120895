"""A message's picture in the spool (`domains.NAME.images`): its row in `media`, stored in the
accept's commit, read by the HTTP route that serves it and by `queue show`.

The row belongs to the message (ON DELETE CASCADE, as its deliveries): a purge or a `queue drop`
takes it, and the URL answers 404 from then on. One row a message, however many deliveries send
it; a picture that was refused is kept as a row without bytes, so `queue show` can say why.

A delivery that sends the picture stores `image` as a marker (`picture:jpg`), not a URL: the
URL is made at send time (gateway.delivery.request), from the running http.public_url and
secret, so a stored request never carries an address that has gone stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.spool.rows import NewPicture, Picture
from gateway.spool.steps import Fetch, Job, Query, Row

if TYPE_CHECKING:
    from gateway.spool.dialect import Dialect

IMAGE = "image"  # the platform's field
_MARK = "picture:"
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png"}
TYPES = {ext: content_type for content_type, ext in EXTENSIONS.items()}


def marker(content_type: str) -> str:
    """The stored `image` of a delivery that sends the message's picture."""
    return _MARK + EXTENSIONS[content_type]


def marked(request: object) -> str | None:
    """The picture's extension if `request` (a request's `image`) is a marker, else None."""
    if isinstance(request, str) and request.startswith(_MARK):
        ext = request[len(_MARK) :]
        return ext if ext in TYPES else None
    return None


def insert(sql: Dialect, new: Sequence[tuple[str, NewPicture | None]]) -> Job[None]:
    """The pictures (by queue id) of messages being stored, after the messages: the rows refer
    to them."""
    rows = [
        (
            queue_id,
            p.about.content_type,
            p.about.width,
            p.about.height,
            p.about.size,
            p.about.source,
            p.about.source_size,
            p.about.problem,
            p.data if p.about.problem is None else None,
        )
        for queue_id, p in new
        if p is not None
    ]
    if rows:
        yield Query(sql.INSERT_MEDIA, rows, Fetch.MANY)


def read(sql: Dialect, queue_id: str) -> Job[tuple[str, bytes] | None]:
    """(content type, bytes) of a message's picture; None if it has none (or no such
    message, or it was refused)."""
    row: Row | None = yield Query(sql.READ_MEDIA, (queue_id,), Fetch.ONE)
    if row is None or row["data"] is None:
        return None
    return str(row["content_type"]), bytes(row["data"])


def info(sql: Dialect, queue_id: str) -> Job[Picture | None]:
    """A message's picture as `queue show` tells of it: everything but its bytes."""
    row: Row | None = yield Query(sql.SHOW_MEDIA, (queue_id,), Fetch.ONE)
    if row is None:
        return None
    return Picture(
        row["content_type"],
        row["width"],
        row["height"],
        row["size"],
        row["source"],
        row["source_size"],
        row["problem"],
    )
