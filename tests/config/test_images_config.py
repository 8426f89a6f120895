"""domains.NAME.images and images_max_size: checked once at load, each problem at its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.config.loader import parse_config
from gateway.errors import ConfigError

HTTP = {"listen": "127.0.0.1:0", "public_url": "https://gw.example.com"}


def config(domain: dict[str, Any], http: dict[str, Any] | None = HTTP) -> dict[str, Any]:
    data: dict[str, Any] = {"api": {"token": "t"}, "domains": {"cams.local": domain}}
    if http is not None:
        data["http"] = http
    return data


def problems(data: object) -> list[str]:
    with pytest.raises(ConfigError) as error:
        parse_config(data, env={})
    return error.value.problems


def test_images_are_off_by_default_and_5_mib_when_on() -> None:
    off = parse_config(config({"type": "viber"}), env={}).domains["cams.local"]
    assert (off.images, off.images_max_size) == (False, 5 * 1024 * 1024)
    on = parse_config(
        config({"type": "telegram", "images": True, "images_max_size": "2MiB"}), env={}
    ).domains["cams.local"]
    assert (on.images, on.images_max_size) == (True, 2 * 1024 * 1024)


@pytest.mark.parametrize("kind", ["viber", "whatsapp", "telegram", "vk", "ok", "bot", "mms"])
def test_every_type_that_takes_image_may_have_images(kind: str) -> None:
    assert parse_config(config({"type": kind, "images": True}), env={}).domains


@pytest.mark.parametrize("kind", ["sms", "email", "push", "bulk", "voice"])
def test_images_on_a_type_without_image_is_refused_at_its_key(kind: str) -> None:
    assert problems(config({"type": kind, "images": True})) == [
        "domains[cams.local].images: only for types bot, mms, ok, telegram, viber, vk, whatsapp"
        f" (this domain is {kind})"
    ]


def test_images_need_http_public_url() -> None:
    expected = [
        "domains[cams.local].images: needs http.public_url"
        " (the platform fetches the picture from there)"
    ]
    assert problems(config({"type": "viber", "images": True}, http=None)) == expected
    no_url = config({"type": "viber", "images": True}, http={"listen": "127.0.0.1:0"})
    assert problems(no_url) == expected


def test_bad_images_values_name_their_keys() -> None:
    bad = config({"type": "viber", "images": "yes please", "images_max_size": "big"})
    assert problems(bad)[:2] == [
        "domains[cams.local].images: 'yes please' is not true or false",
        "domains[cams.local].images_max_size: 'big' is not a size (use e.g. 512KiB, 10MiB)",
    ]
    assert problems(config({"type": "viber", "images": True, "images_max_size": 512})) == [
        "domains[cams.local].images_max_size: 512 is too small (at least 1KiB)"
    ]


def test_images_without_pillow_is_a_config_error_saying_what_to_install() -> None:
    # Pillow made unimportable in a fresh interpreter, as on a machine without the extra.
    script = (
        "import sys; sys.modules['PIL'] = None\n"
        "from gateway.config.loader import parse_config\n"
        "from gateway.errors import ConfigError\n"
        f"try:\n    parse_config({config({'type': 'viber', 'images': True})!r}, env={{}})\n"
        "except ConfigError as e:\n    print('\\n'.join(e.problems))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == (
        "domains[cams.local].images: needs Pillow, which decodes and re-encodes the pictures:"
        " pip install 'smtp2pulse[images]' (or the distribution's python3-pil)"
    )


def test_check_config_names_the_domains_that_send_pictures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config({"type": "viber", "images": True})))
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "domain cams.local: type viber, recipient phone, pictures up to 5242880 bytes" in out
