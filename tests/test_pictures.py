"""domains.NAME.images over real SMTP, a real fake platform and real HTTP: the mail's picture
is kept with the message, the platform gets a signed URL as `image`, and fetching that URL
gives the picture re-encoded (decoded pixels compared, EXIF gone)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml
import yarl

from gateway.app import Gateway
from gateway.config.loader import parse_config
from gateway.delivery.signing import media_signature
from gateway.shown import detail_lines
from tests.conftest import Running, base_config, merge, text_message
from tests.fakeplatform import FakePlatform
from tests.pictures import (
    GPS_MARK,
    bomb_png,
    camera_jpeg,
    decoded,
    mean_difference,
    progressive_bomb,
    transparent_png,
    with_attachment,
    with_inline,
)
from tests.test_cli import run_cli
from tests.test_imports import _loaded_after

SECRET = "callback-secret-0123456789abcdef"
PUBLIC = "https://gw.example.com/pulse"
VIBER = "79001234567@viber.local"
PICTURES: dict[str, Any] = {
    "smtp": {"max_message_size": "1MiB"},
    "http": {
        "listen": "127.0.0.1:0",
        "public_url": PUBLIC,
        "callback_secret": SECRET,
        # The page and /metrics are for another network: a picture is for anyone.
        "allow_networks": ["192.0.2.0/24"],
    },
    "domains": {"viber.local": {"type": "viber", "sender": "Cams", "images": True}},
}


@pytest.fixture
async def gw(start_gateway: Callable[..., Awaitable[Running]]) -> Running:
    return await start_gateway(PICTURES)


def local(gw: Running, url: str) -> str:
    """The URL the platform got, on this test's gateway (public_url is a name for it)."""
    assert url.startswith(PUBLIC + "/media/"), url
    assert gw.gateway.status is not None
    host, port = gw.gateway.status.addresses[0]
    return f"http://{host}:{port}{urlsplit(url).path.removeprefix('/pulse')}"


async def fetch(url: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.content_type, await response.read()


async def sent(gw: Running, platform: FakePlatform, message: EmailMessage, to: list[str]) -> str:
    queue_id = await gw.submit(message, to)
    assert set(await gw.wait_final(queue_id)) == {"sent"}
    await platform.wait_for(len(to))
    return queue_id


async def test_a_jpeg_attachment_is_sent_as_a_signed_url_serving_the_picture_without_exif(
    gw: Running, platform: FakePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    original = camera_jpeg()
    queue_id = await sent(gw, platform, with_attachment(original), [VIBER, "79001234567@sms.local"])
    viber, sms = sorted(platform.messages, key=lambda m: m["type"] != "viber")
    assert viber["type"] == "viber" and viber["sent_text"] == (
        "Motion detected\nCamera 3: motion at the gate"
    )
    assert viber["image"] == (f"{PUBLIC}/media/{queue_id}/{media_signature(SECRET, queue_id)}.jpg")
    assert "image" not in sms and sms["type"] == "sms"  # text only, as before

    caplog.set_level("INFO", "smtp2pulse")
    status, content_type, data = await fetch(local(gw, viber["image"]))
    assert (status, content_type) == (200, "image/jpeg")
    assert f"queue_id={queue_id} picture fetched by 127.0.0.1" in caplog.text
    picture = decoded(data)
    assert picture.format == "JPEG" and picture.size == (320, 240)
    assert mean_difference(picture, decoded(original)) < 3  # the same picture, re-encoded
    assert not picture.getexif() and not {"exif", "icc_profile"} & set(picture.info)
    assert GPS_MARK not in data and b"CamMaker" not in data

    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None and detail.picture is not None
    assert f"picture   image/jpeg 320x240, {len(data)} bytes (from snapshot.jpg" in "\n".join(
        detail_lines(detail)
    )


async def test_an_html_mails_cid_picture_is_sent_and_its_transparency_kept_as_png(
    gw: Running, platform: FakePlatform
) -> None:
    picture, logo = transparent_png(), transparent_png(16, 16)
    await sent(gw, platform, with_inline(picture, logo), [VIBER])
    status, content_type, data = await fetch(local(gw, platform.messages[0]["image"]))
    assert (status, content_type) == (200, "image/png")
    served = decoded(data)
    assert served.size == (64, 48) and served.mode == "RGBA"  # the one shown, not the logo
    assert served.tobytes() == decoded(picture).convert("RGBA").tobytes()  # lossless: exact


async def test_a_large_picture_is_made_smaller_for_messengers(
    gw: Running, platform: FakePlatform
) -> None:
    await sent(gw, platform, with_attachment(camera_jpeg(4000, 1000)), [VIBER])
    _, _, data = await fetch(local(gw, platform.messages[0]["image"]))
    assert decoded(data).size == (2560, 640)


async def test_an_altered_or_unknown_url_gets_403_or_404_and_says_nothing_else(
    gw: Running, platform: FakePlatform
) -> None:
    queue_id = await sent(gw, platform, with_attachment(camera_jpeg()), [VIBER])
    url = local(gw, platform.messages[0]["image"])
    good = media_signature(SECRET, queue_id)
    other = "0" * len(queue_id)
    root = url.split("/media/")[0] + "/media/"
    forged = good[:-1] + ("0" if good[-1] != "0" else "1")
    cases = {
        f"{root}{queue_id}/{forged}.jpg": 403,  # one character of the signature
        f"{root}{other}/{good}.jpg": 403,  # another message's id with this signature
        f"{root}{other}/{media_signature(SECRET, other)}.jpg": 404,  # signed, but no such message
        f"{root}{queue_id}/{good}.png": 404,  # not its type
        f"{root}{queue_id}/{good}": 404,
        f"{root}{queue_id.lower()}/{good}.jpg": 404,
        f"{root}{queue_id}/{good}.jpg/x": 403,  # no such route: the operator's networks only
    }
    for bad, expected in cases.items():
        status, _, body = await fetch(bad)
        assert status == expected, bad
        assert queue_id.encode() not in body and len(body) < 30
    # A path that says /media/ and means the page is the page's: for allow_networks only.
    async with (
        aiohttp.ClientSession() as session,
        session.get(yarl.URL(f"{root}../queue/{queue_id}", encoded=True)) as response,
    ):
        assert response.status == 403 and queue_id.encode() not in await response.read()
    assert (await fetch(url))[0] == 200
    # The rest of the HTTP side stays the operator's (allow_networks).
    assert (await fetch(url.split("/media/")[0] + "/"))[0] == 403


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"%PDF-1.4 this is no picture at all" * 20, "not a picture"),
        (bomb_png(), "a decompression bomb (100000x100000 pixels"),
        (camera_jpeg()[:2000], "a broken picture"),
        (progressive_bomb(1000), "a JPEG bomb (over 100 scans)"),
    ],
    ids=["not-a-picture", "bomb", "broken", "progressive-bomb"],
)
async def test_what_is_not_a_picture_is_not_sent_and_the_text_is(
    gw: Running, platform: FakePlatform, caplog: pytest.LogCaptureFixture, data: bytes, why: str
) -> None:
    caplog.set_level("INFO", "smtp2pulse")
    queue_id = await sent(gw, platform, with_attachment(data, "jpeg", "cam.jpg"), [VIBER])
    (message,) = platform.messages
    assert "image" not in message and message["sent_text"].startswith("Motion detected")
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None
    shown = "\n".join(detail_lines(detail))
    assert f"picture   not sent: {why}" in shown and "(cam.jpg (" in shown
    assert any(
        f"queue_id={queue_id} picture cam.jpg ({len(data)} bytes) not sent: {why}" in r.getMessage()
        for r in caplog.records
    )
    assert await gw.gateway.spool.picture(queue_id) is None


async def test_a_picture_over_images_max_size_is_not_sent(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    changes = {**PICTURES, "domains": {"viber.local": {**PICTURES["domains"]["viber.local"]}}}
    changes["domains"]["viber.local"]["images_max_size"] = "4KiB"
    gw = await start_gateway(changes)
    queue_id = await sent(gw, platform, with_attachment(camera_jpeg()), [VIBER])
    assert "image" not in platform.messages[0]
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None and detail.picture is not None
    assert detail.picture.problem == "larger than images_max_size (4096 bytes)"


async def test_a_message_only_to_sms_stores_no_picture(gw: Running, platform: FakePlatform) -> None:
    queue_id = await sent(gw, platform, with_attachment(camera_jpeg()), ["79001234567@sms.local"])
    assert "image" not in platform.messages[0]
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None and detail.picture is None


async def test_a_purged_messages_picture_is_gone(gw: Running, platform: FakePlatform) -> None:
    await sent(gw, platform, with_attachment(camera_jpeg()), [VIBER])
    url = local(gw, platform.messages[0]["image"])
    assert (await fetch(url))[0] == 200
    assert await gw.gateway.spool.purge(time.time() + 60) == 1
    assert (await fetch(url))[0] == 404


async def test_a_dropped_messages_picture_is_gone(gw: Running, platform: FakePlatform) -> None:
    queue_id = await sent(gw, platform, with_attachment(camera_jpeg()), [VIBER])
    url = local(gw, platform.messages[0]["image"])
    assert await gw.gateway.spool.drop_message(queue_id)
    assert (await fetch(url))[0] == 404


async def test_a_text_mail_to_an_images_domain_has_no_image(
    gw: Running, platform: FakePlatform
) -> None:
    await sent(gw, platform, text_message("Door", "opened"), [VIBER])
    assert "image" not in platform.messages[0]


async def test_the_stored_request_holds_no_url_that_could_go_stale(
    gw: Running, platform: FakePlatform
) -> None:
    # The URL is made when the request is sent, from the running http.public_url.
    queue_id = await sent(gw, platform, with_attachment(camera_jpeg()), [VIBER])
    stored = await gw.gateway.spool.show_message(queue_id)
    assert stored is not None and stored.deliveries[0].request["image"] == "picture:jpg"
    assert platform.messages[0]["image"].startswith(PUBLIC + "/media/")


async def test_any_gateway_of_one_postgresql_spool_serves_the_picture(
    tmp_path: Path, platform: FakePlatform, pg_url: str
) -> None:
    data = merge(base_config(tmp_path / "unused.sqlite3", platform.base_url), PICTURES)
    del data["spool"]["path"]
    data["spool"]["url"] = pg_url
    one, other = (Gateway(parse_config(data, env={})) for _ in range(2))
    await one.start()
    try:
        await other.start()
        try:
            gw = Running(one)
            queue_id = await sent(gw, platform, with_attachment(camera_jpeg()), [VIBER])
            url = local(gw, platform.messages[0]["image"])
            assert other.status is not None
            host, port = other.status.addresses[0]
            elsewhere = f"http://{host}:{port}" + urlsplit(url).path
            status, content_type, served = await fetch(elsewhere)
            assert (status, content_type) == (200, "image/jpeg")
            assert served == (await fetch(url))[2]
            assert mean_difference(decoded(served), decoded(camera_jpeg())) < 3
            # Purged through one, gone from both.
            assert await other.spool.purge(time.time() + 60) == 1
            assert (await fetch(elsewhere))[0] == (await fetch(url))[0] == 404
            assert queue_id
        finally:
            await other.stop()
    finally:
        await one.stop()


def test_preview_shows_the_picture_it_would_send(tmp_path: Path) -> None:
    base = base_config(tmp_path / "spool.sqlite3", "https://pulse.invalid/api/v1/bulk")
    data = merge(base, PICTURES)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    original = camera_jpeg()
    result = run_cli(
        "preview",
        "-c",
        str(path),
        "--to",
        VIBER,
        "--to",
        "79001234567@sms.local",
        stdin=with_attachment(original).as_bytes(),
    )
    assert result.returncode == 0, result.stderr
    viber, sms = json.loads(result.stdout)
    assert viber["form"]["image"] == f"{PUBLIC}/media/<queue id>/<signature>.jpg"
    assert viber["picture"] == {
        "type": "image/jpeg",
        "bytes": viber["picture"]["bytes"],
        "width": 320,
        "height": 240,
        "from": f"snapshot.jpg ({len(original)} bytes)",
    }
    assert 0 < viber["picture"]["bytes"] < len(original)
    assert "picture" not in sms and "image" not in sms["form"]
    broken = run_cli(
        "preview",
        "-c",
        str(path),
        "--to",
        VIBER,
        stdin=with_attachment(original[:2000]).as_bytes(),
    )
    (entry,) = json.loads(broken.stdout)
    assert "image" not in entry["form"]
    assert entry["picture"]["not_sent"].startswith("a broken picture")


def test_pillow_is_loaded_only_for_a_config_with_images(tmp_path: Path) -> None:
    plain = base_config(tmp_path / "spool.sqlite3", "http://127.0.0.1:9/api/v1/bulk")
    code = (
        "from gateway.app import Gateway\nfrom gateway.config.loader import parse_config\n"
        "Gateway(parse_config({!r}, env={{}}))"
    )
    assert _loaded_after(code.format(plain), ("PIL",)) == []
    with_images = merge(plain, PICTURES)
    assert _loaded_after(code.format(with_images), ("PIL",)) == ["PIL"]  # the check can see it


async def test_in_a_batch_each_message_carries_the_picture(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway({**PICTURES, "api": {"batch_size": 10}})
    to = [VIBER, "79007654321@viber.local"]
    queue_id = await gw.submit(with_attachment(camera_jpeg()), to)
    assert await gw.wait_final(queue_id) == ["sent", "sent"]
    (request,) = await platform.wait_for(1)  # one send-list-messages for both
    assert request.batch and len(request.messages) == 2
    url = f"{PUBLIC}/media/{queue_id}/{media_signature(SECRET, queue_id)}.jpg"
    assert [m["image"] for m in request.messages] == [url, url]
    assert (await fetch(local(gw, url)))[:2] == (200, "image/jpeg")


async def test_without_a_configured_secret_the_spools_own_signs_the_url(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    # http.callback_secret left out: the spool makes one and keeps it (gateway.spool.meta),
    # and the URL is signed with that, not with an empty secret every URL would fail.
    http = {k: v for k, v in PICTURES["http"].items() if k != "callback_secret"}
    gw = await start_gateway({**PICTURES, "http": http})
    queue_id = await sent(gw, platform, with_attachment(camera_jpeg()), [VIBER])
    secret = await gw.gateway.spool.callback_secret()
    assert len(secret) >= 16
    assert platform.messages[0]["image"].endswith(f"/{media_signature(secret, queue_id)}.jpg")
    status, content_type, _ = await fetch(local(gw, platform.messages[0]["image"]))
    assert (status, content_type) == (200, "image/jpeg")
