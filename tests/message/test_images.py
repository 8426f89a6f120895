"""The mail's picture: which part is chosen, and the picture made from it (Pillow, real files)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from email.message import EmailMessage
from pathlib import Path

import pytest
from PIL import Image

from gateway.config.model import DomainConfig
from gateway.message import images
from gateway.message.parse import OFF_LOOP_SIZE, off_loop, parse_message
from tests.pictures import (
    blank_png,
    camera_jpeg,
    decoded,
    progressive_bomb,
    scene,
    transparent_png,
    with_attachment,
    with_inline,
)

VIBER = DomainConfig(name="viber.local", type="viber", images=True)


async def test_a_small_mail_that_may_carry_a_picture_is_parsed_in_the_picture_thread() -> None:
    # Decoding a picture is CPU work: off the loop however small the mail.
    small = with_attachment(transparent_png(8, 8), "png", "p.png").as_bytes()
    assert len(small) < OFF_LOOP_SIZE
    where = await off_loop(small, lambda: threading.current_thread().name)
    assert where.startswith("smtp2pulse-picture")
    text = b"Subject: hi\r\n\r\nplain words\r\n"
    assert await off_loop(text, lambda: threading.current_thread().name) == "MainThread"
    # Without a domain that sends pictures, an attachment decides nothing: none is decoded.
    here = await off_loop(small, lambda: threading.current_thread().name, pictures=False)
    assert here == "MainThread"


async def test_large_text_mail_is_not_queued_behind_pictures_being_made() -> None:
    # A camera storm: pictures wait their turn in their own thread, while a large text mail
    # (parsed in a parser thread) is parsed at once.
    release = threading.Event()
    picture = with_attachment(camera_jpeg()).as_bytes()
    pictures = [
        asyncio.ensure_future(off_loop(picture, lambda: release.wait(10))) for _ in range(3)
    ]
    try:
        large = b"Subject: report\r\n\r\n" + b"all well at the gate\r\n" * 2000
        assert len(large) > OFF_LOOP_SIZE
        where = await asyncio.wait_for(off_loop(large, lambda: threading.current_thread().name), 5)
        assert where.startswith("smtp2pulse-parse")
        assert not any(p.done() for p in pictures)
    finally:
        release.set()
    assert await asyncio.gather(*pictures) == [True, True, True]


async def test_an_html_of_blanks_after_src_is_read_in_linear_time() -> None:
    message = EmailMessage()
    message["Subject"] = "x"
    message.set_content("see the picture")
    message.add_alternative("<p>cid: src=" + " " * 64_000 + "x</p>", subtype="html")
    html = next(part for part in message.iter_parts() if part.get_content_type() == "text/html")
    assert isinstance(html, EmailMessage)
    html.add_related(transparent_png(8, 8), "image", "png", cid="<a@b>")
    raw = message.as_bytes()
    parsed = await asyncio.wait_for(off_loop(raw, lambda: parse_message(raw)), 2)
    assert parsed.picture is not None and parsed.picture.content_type == "image/png"


def test_an_attachment_comes_before_an_inline_picture() -> None:
    message = with_inline(transparent_png(), transparent_png(16, 16))
    message.add_attachment(camera_jpeg(), maintype="image", subtype="jpeg", filename="a.jpg")
    picture = parse_message(message.as_bytes()).picture
    assert picture is not None and (picture.name, picture.content_type) == ("a.jpg", "image/jpeg")


def test_the_cid_picture_the_html_shows_not_the_first_inline_part() -> None:
    shown, logo = transparent_png(40, 30), transparent_png(16, 16)
    picture = parse_message(with_inline(shown, logo).as_bytes()).picture
    assert picture is not None and picture.data == shown


def test_an_inline_picture_no_html_names_is_taken_when_there_is_no_other() -> None:
    message = EmailMessage()
    message["Subject"] = "snapshot"
    message.set_content("see picture")
    message.add_attachment(camera_jpeg(), maintype="image", subtype="jpeg", disposition="inline")
    picture = parse_message(message.as_bytes()).picture
    assert picture is not None and picture.content_type == "image/jpeg"


def test_a_text_mail_has_none() -> None:
    assert parse_message(b"Subject: x\r\n\r\nbody\r\n").picture is None


def test_a_picture_is_kept_only_for_a_domain_with_images() -> None:
    source = parse_message(with_attachment(camera_jpeg()).as_bytes()).picture
    sms = DomainConfig(name="sms.local", type="sms")
    assert images.kept(source, [sms, None]) is None
    kept = images.kept(source, [sms, VIBER])
    assert kept is not None and kept.about.content_type == "image/jpeg"
    assert images.image_field(kept, VIBER) == "picture:jpg"
    assert images.image_field(kept, sms) is None


def test_an_upright_picture_is_made_of_a_rotated_one_as_its_exif_says() -> None:
    import io

    from PIL import ExifTags, Image

    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # the camera was turned: rotate 90° clockwise to show
    out = io.BytesIO()
    scene(320, 240).save(out, "JPEG", exif=exif)
    content_type, data, width, height = images.reencoded(out.getvalue())
    assert (content_type, width, height) == ("image/jpeg", 240, 320)
    assert decoded(data).size == (240, 320) and not decoded(data).getexif()


def test_a_gif_with_a_transparent_colour_becomes_a_png_that_keeps_it() -> None:
    import io

    from PIL import Image

    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 1
    out = io.BytesIO()
    image.save(out, "GIF", transparency=1)
    content_type, data, _, _ = images.reencoded(out.getvalue())
    assert content_type == "image/png"
    assert decoded(data).convert("RGBA").getpixel((0, 0))[3] == 0  # type: ignore[index]


def test_a_progressive_jpeg_of_a_thousand_scans_is_a_bomb_never_decoded() -> None:
    # 7000x7000 and a thousand scans (360 KB) cost half a minute of a parser thread's CPU.
    bomb = progressive_bomb(1000, side=200)
    assert images.jpeg_scans(bomb) == images.MAX_SCANS + 1
    with pytest.raises(images.Refused, match=r"^a JPEG bomb \(over 100 scans\)$"):
        images.reencoded(bomb)


def test_a_progressive_jpeg_as_encoders_write_it_is_a_picture() -> None:
    import io

    out = io.BytesIO()
    scene(320, 240).save(out, "JPEG", progressive=True, exif=Image.Exif(), quality=90)
    assert 1 < images.jpeg_scans(out.getvalue()) <= 12
    assert images.reencoded(out.getvalue())[2:] == (320, 240)
    assert images.jpeg_scans(progressive_bomb(images.MAX_SCANS - 20, side=64)) <= images.MAX_SCANS


def test_an_exif_thumbnail_full_of_scans_is_not_counted_and_a_scan_after_it_is() -> None:
    # What an APP segment holds is skipped by its length; a marker-like byte pair in it is not
    # a scan, and cannot end the count early either.
    import io

    out = io.BytesIO()
    scene(64, 48).save(out, "JPEG")
    plain = out.getvalue()
    filler = (b"\xff\xda\x00\x02" * 200 + b"\xff\xd9")[:60000]
    app = b"\xff\xe1" + (len(filler) + 2).to_bytes(2, "big") + filler
    hidden = plain[:2] + app + plain[2:]
    assert images.jpeg_scans(hidden) == 1
    assert images.reencoded(hidden)[2:] == (64, 48)
    bomb = progressive_bomb(500, side=64)
    assert images.jpeg_scans(bomb[:2] + app + bomb[2:]) == images.MAX_SCANS + 1


def test_a_picture_of_50_megapixels_is_made_without_copies_of_it_as_it_came(tmp_path: Path) -> None:
    # 7071x7071 RGBA is 200 MB decoded: the decode, one copy for the resize's premultiplied
    # alpha, and the small one made of it; not also a turned copy, a converted copy and a copy
    # of its alpha band (670 MB in all, and a picture is made at a time in each such thread).
    path = tmp_path / "big.png"
    path.write_bytes(blank_png(7071, 7071))
    script = (
        "import resource, sys\n"
        "from gateway.message.images import reencoded\n"
        "import PIL.PngImagePlugin\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(reencoded(data)[0])\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    kind, grown = done.stdout.split()
    assert kind == "image/png" and int(grown) < 550, done.stdout  # MB over the process's start


def test_a_camera_jpeg_with_a_broken_exif_is_made_without_a_warning() -> None:
    # Pillow reads the EXIF when it opens a JPEG, and warns of a tag it cannot read. The
    # picture is made all the same, where warnings are errors (here) as anywhere else, and
    # nothing goes to stderr past the log.
    import io
    import warnings

    from PIL import ExifTags

    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    out = io.BytesIO()
    scene(64, 32).save(out, "JPEG", exif=exif)
    data = bytearray(out.getvalue())
    tiff = data.index(b"Exif\x00\x00") + 6
    data[tiff + 4 : tiff + 8] = (0xFFFF).to_bytes(4, "little")  # IFD0 past the segment's end
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        made = images.reencoded(bytes(data))
    assert made[0] == "image/jpeg" and made[2:] == (64, 32)  # its orientation unread: as it is
    assert [str(w.message) for w in seen] == []


def test_a_jpeg_of_thousands_of_segments_is_refused_before_a_walk_over_each() -> None:
    import io

    out = io.BytesIO()
    scene(64, 48).save(out, "JPEG")
    plain = out.getvalue()
    comments = b"\xff\xfe\x00\x03x" * 1_000_000  # 5 MB of one-byte comments
    assert images.jpeg_scans(plain[:2] + comments[: 5 * 100] + plain[2:]) == 1
    assert images.jpeg_scans(plain[:2] + comments + plain[2:]) == images.MAX_SCANS + 1
