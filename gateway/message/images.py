"""The mail's picture (`domains.NAME.images`): which part it is, and the picture made from it.

Which: the first `image/*` attachment; else the first image the HTML shows by `cid:`; else the
first other `image/*` part (an inline picture, as Apple Mail sends them).

Made: decoded by Pillow and encoded anew, so what the platform fetches is pixels only — no EXIF
(a camera's GPS position, its serial number), no ICC profile, no comment, nothing appended to
the file. JPEG (quality 85) unless the picture has transparency, which only PNG keeps. The
longest side is at most MAX_SIDE pixels (messengers show less, and fetch and store what we send);
a picture declaring more than MAX_SOURCE_PIXELS is a decompression bomb and is never decoded,
nor is a JPEG of more than MAX_SCANS scans.
Anything Pillow cannot read — not a picture, broken, cut short — gives no picture, and says why:
the text is sent all the same.

Pillow is imported only here and only when a domain has `images: true` (the `images` extra); the
work is CPU-bound, and runs where `prepare` runs: off the event loop (gateway.message.parse,
off_loop).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.message import Message
from urllib.parse import unquote

from gateway.config.model import DomainConfig
from gateway.spool.media import marker
from gateway.spool.rows import NewPicture, Picture

# Formats decoded at all: what cameras, recorders and monitoring send. Others (TIFF's many
# compressions, PSD, ICO...) are refused as "not a picture we read": less decoder to attack.
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP")
MAX_SOURCE_PIXELS = 50_000_000  # a 50-megapixel camera; more is a bomb, never decoded
# A progressive JPEG is decoded scan by scan, each over the whole picture: a few bytes a scan
# buy a full pass of decoding, so thousands of them in a small file are a bomb of their own.
# Encoders write about ten; the cap leaves room and bounds the work at a few passes more.
MAX_SCANS = 100
MAX_SIDE = 2560  # the longest side sent (Telegram and Viber show photos smaller)
JPEG_QUALITY = 85
# A JPEG marker inside or after a scan's data: 0xFF then anything but a stuffed zero, a restart
# marker or another fill byte.
# Modes whose pixels a resize averages well as they are.
_RESIZED_AS_IS = frozenset({"RGB", "RGBA", "L", "LA"})
_JPEG_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
# Possessive: a run of blanks is never given back, so the time is linear in the HTML (with
# backtracking, `src=` and 64,000 blanks cost 22 s of a thread).
_CID = re.compile(r"""src\s*+=\s*+["']?+\s*+cid:([^"'\s>]+)""", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Attachment:
    """The mail's picture as it came: its part's decoded bytes."""

    content_type: str
    name: str  # its file name, else its type: for the log and `queue show`
    data: bytes


class Refused(Exception):
    """Why a part gives no picture (in words for the log and `queue show`)."""


def first_picture(
    parts: Sequence[Message], html: str | None, name: Callable[[Message], str]
) -> Attachment | None:
    """The picture among a message's unused leaf parts; `name` says what a part is called."""
    images = [part for part in parts if _is_image(part)]
    if not images:
        return None
    chosen = next((part for part in images if _disposition(part) == "attachment"), None)
    if chosen is None and html and "cid:" in html.lower():
        by_cid = {_content_id(part): part for part in reversed(images)}
        chosen = next(
            (by_cid[cid] for cid in (unquote(c) for c in _CID.findall(html)) if cid in by_cid),
            None,
        )
    part = chosen or images[0]
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    data = payload if isinstance(payload, bytes) else b""
    return Attachment(part.get_content_type(), _printable(name(part)), data)


def kept(source: Attachment | None, domains: Iterable[DomainConfig | None]) -> NewPicture | None:
    """The picture stored with the message: for the domains that send one, and only if the
    mail has one. One picture for all of them, made within the largest images_max_size."""
    sizes = [d.images_max_size for d in domains if d is not None and d.images]
    if source is None or not sizes:
        return None
    described = f"{source.name} ({len(source.data)} bytes)"
    try:
        if len(source.data) > max(sizes):
            raise Refused(f"larger than images_max_size ({max(sizes)} bytes)")
        content_type, data, width, height = reencoded(source.data)
    except Refused as refused:
        return NewPicture(Picture("", 0, 0, 0, described, len(source.data), str(refused)))
    return NewPicture(
        Picture(content_type, width, height, len(data), described, len(source.data), None), data
    )


def image_field(new: NewPicture | None, domain: DomainConfig) -> str | None:
    """What a delivery to `domain` stores as its `image` (see gateway.spool.media), or None."""
    picture = new.about if new is not None else None
    if picture is None or not domain.images or picture.problem is not None:
        return None
    if picture.source_size > domain.images_max_size:
        return None
    return marker(picture.content_type)


def note(new: NewPicture | None, domains: Iterable[DomainConfig | None]) -> str | None:
    """The log's line about the picture."""
    if new is None:
        return None
    picture = new.about
    if picture.problem is not None:
        return f"picture {picture.source} not sent: {picture.problem}"
    small = sorted(
        d.name
        for d in domains
        if d is not None and d.images and picture.source_size > d.images_max_size
    )
    over = f"; not for {', '.join(small)} (over their images_max_size)" if small else ""
    return (
        f"picture {picture.source} kept as {picture.content_type}"
        f" {picture.width}x{picture.height} ({picture.size} bytes){over}"
    )


def reencoded(data: bytes) -> tuple[str, bytes, int, int]:
    """(content type, bytes, width, height) of the picture made anew from `data`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    # Checked here against MAX_SOURCE_PIXELS instead: Pillow's own check only warns between its
    # limit and twice it, and a warning is no refusal.
    Image.MAX_IMAGE_PIXELS = None
    # Pillow warns of what it skips in a broken file (an EXIF tag it cannot read, which cheap
    # cameras write): a line on stderr past the log, or, where warnings are errors, a picture
    # refused that is sent elsewhere. The EXIF is dropped anyway: the same picture either way.
    # Put first on every call, as a test's own filters are put first for each test.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    scans = jpeg_scans(data)
    if scans > MAX_SCANS:
        raise Refused(f"a JPEG bomb (over {MAX_SCANS} scans)")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as source:
            width, height = source.size
            if width * height > MAX_SOURCE_PIXELS:
                raise Refused(
                    f"a decompression bomb ({width}x{height} pixels, over {MAX_SOURCE_PIXELS})"
                )
            source.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decoded at a smaller scale
            transparent = _transparent(source)
            mode = "RGBA" if transparent else "RGB"
            # Made smaller first, then turned and converted: a copy of the picture as it came
            # is hundreds of megabytes for a large one. A palette is converted before (it
            # would be resized by its nearest pixel), which costs a copy of what it is.
            image = source if source.mode in _RESIZED_AS_IS else source.convert(mode)
            image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
            image = ImageOps.exif_transpose(image)  # upright as the camera meant, then no EXIF
            image = image.convert(mode)
            image.info.clear()  # Pillow writes an ICC profile it finds here
            out = io.BytesIO()
            if transparent:
                image.save(out, "PNG", optimize=True)
            else:
                image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    except Refused:
        raise
    except UnidentifiedImageError:
        raise Refused("not a picture (no JPEG, PNG, GIF, WebP or BMP)") from None
    except MemoryError:
        raise Refused("too large to decode") from None
    except Exception as exc:  # Pillow's decoders raise many kinds for a broken file
        why = _printable(str(exc))[:100] or type(exc).__name__
        raise Refused(f"a broken picture ({why})") from None
    return ("image/png" if transparent else "image/jpeg"), out.getvalue(), *image.size


def jpeg_scans(data: bytes) -> int:
    """How many scans a JPEG has (0 for anything else), counted up to one more than MAX_SCANS:
    its segments walked by their lengths to the end of its first picture, so that what an APP
    segment holds (an EXIF thumbnail is a JPEG too) is never counted."""
    if not data.startswith(b"\xff\xd8"):
        return 0
    at, scans, segments = 2, 0, 0
    while scans <= MAX_SCANS and at + 4 <= len(data):
        segments += 1
        if data[at] != 0xFF or segments > 20 * MAX_SCANS:
            # Broken, or segments by the thousand: Pillow refuses the one, the other is refused
            # here as a bomb, before a pass of Python over each of them costs more.
            return scans if data[at] != 0xFF else MAX_SCANS + 1
        kind = data[at + 1]
        if kind == 0xFF:  # a fill byte before the marker
            at += 1
            continue
        if kind == 0xD9:  # the end of the picture (an MPO's next one is not decoded)
            break
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        at += 2 + length
        if kind == 0xDA:  # a scan: its header, then entropy-coded data up to the next marker
            scans += 1
            marker = _JPEG_MARKER.search(data, at)
            if marker is None:
                break
            at = marker.start()
    return scans


def _transparent(image: object) -> bool:
    from PIL import Image

    assert isinstance(image, Image.Image)
    if image.mode in ("RGBA", "LA", "PA"):
        alpha = image.getextrema()[-1]  # each band's, without a copy of the alpha band
        return bool(alpha[0] < 255)  # type: ignore[index]
    return "transparency" in image.info


def _is_image(part: Message) -> bool:
    try:
        return part.get_content_maintype() == "image"
    except Exception:
        return False


def _disposition(part: Message) -> str | None:
    try:
        return part.get_content_disposition()
    except Exception:
        return None


def _content_id(part: Message) -> str:
    value = part.get("content-id")
    return str(value).strip().strip("<>").strip() if value is not None else ""


def _printable(text: str) -> str:
    # Stored and shown: no control characters (and no NUL, which PostgreSQL refuses).
    return "".join(c if c.isprintable() else " " for c in text)[:200]
