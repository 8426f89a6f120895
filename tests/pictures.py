"""Pictures for the tests of domains.NAME.images: a camera's JPEG with EXIF (GPS, serial), a
PNG with transparency, and the hostile kinds (not a picture, a bomb, a broken file)."""

from __future__ import annotations

import io
import struct
import zlib
from email.message import EmailMessage

from PIL import ExifTags, Image

GPS_MARK = b"CCTV-9000-SN-4711"  # the camera's serial, in the EXIF the gateway must drop


def camera_jpeg(width: int = 320, height: int = 240) -> bytes:
    """A JPEG as a camera writes it: a picture with EXIF (maker, serial, a GPS position)."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "CamMaker"
    exif[ExifTags.Base.BodySerialNumber] = GPS_MARK.decode()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps.update({1: "N", 2: (55.0, 45.0, 21.0), 3: "E", 4: (37.0, 37.0, 3.0)})
    out = io.BytesIO()
    scene(width, height).save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


def scene(width: int, height: int) -> Image.Image:
    """Smooth gradients: what JPEG keeps well, so decoded pixels can be compared."""
    return Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize((width, height)),
            Image.linear_gradient("L").rotate(90).resize((width, height)),
            Image.new("L", (width, height), 128),
        ),
    )


def transparent_png(width: int = 64, height: int = 48) -> bytes:
    image = scene(width, height).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize((width, height)))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def bomb_png(side: int = 100_000) -> bytes:
    """A tiny PNG that declares side x side pixels (ten billion): decoding it would take
    tens of gigabytes."""
    out = io.BytesIO()
    Image.new("L", (8, 8)).save(out, "PNG")
    data = bytearray(out.getvalue())
    ihdr = struct.pack(">II", side, side) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def progressive_bomb(scans: int, side: int = 1000) -> bytes:
    """A progressive JPEG whose last scan comes again `scans` times: a few bytes each, and each
    a pass of decoding over the whole picture (libjpeg warns of the bogus progression, and
    goes on)."""
    out = io.BytesIO()
    Image.new("L", (side, side)).save(out, "JPEG", progressive=True, quality=10)
    data = out.getvalue()
    assert data.endswith(b"\xff\xd9")
    last_scan = data.rindex(b"\xff\xda")
    return data[:-2] + data[last_scan:-2] * scans + b"\xff\xd9"


def blank_png(width: int, height: int) -> bytes:
    """A transparent RGBA PNG made without Pillow, row by row: a process that makes one of 50
    megapixels has not held its 200 MB of pixels (what tests of memory need)."""
    squeeze = zlib.compressobj(9)
    row = bytes(1 + 4 * width)  # filter 0, then transparent black
    idat = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel value (0..255) of two equally sized pictures."""
    assert a.size == b.size, (a.size, b.size)
    pairs = zip(a.convert("RGB").tobytes(), b.convert("RGB").tobytes(), strict=True)
    total = sum(abs(x - y) for x, y in pairs)
    return total / (a.size[0] * a.size[1] * 3)


def with_attachment(data: bytes, subtype: str = "jpeg", name: str = "snapshot.jpg") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Camera <cam@corp.test>"
    message["To"] = "alerts@viber.local"
    message["Subject"] = "Motion detected"
    message.set_content("Camera 3: motion at the gate")
    message.add_attachment(data, maintype="image", subtype=subtype, filename=name)
    return message


def with_inline(picture: bytes, logo: bytes) -> EmailMessage:
    """An HTML mail showing `picture` by cid:, with an unreferenced `logo` before it."""
    message = EmailMessage()
    message["From"] = "NVR <nvr@corp.test>"
    message["To"] = "alerts@viber.local"
    message["Subject"] = "Line crossing"
    message.set_content("Line crossing at camera 5")
    message.add_alternative(
        '<html><body><p>Line crossing</p><img src="cid:snap.5@nvr"></body></html>', subtype="html"
    )
    html = next(part for part in message.iter_parts() if part.get_content_type() == "text/html")
    assert isinstance(html, EmailMessage)
    html.add_related(logo, "image", "png", cid="<logo@nvr>")
    html.add_related(picture, "image", "png", cid="<snap.5@nvr>")
    return message
