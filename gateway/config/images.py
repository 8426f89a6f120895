"""`domains.NAME.images` and `images_max_size`: which domains send the mail's picture as `image`.

Checked once at load: only types whose requests take `image`, only with `http.public_url` (the
platform fetches the picture from there), and only where Pillow, which decodes and re-encodes
every picture, is installed (the `images` extra).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from gateway.config import validation as v
from gateway.config.model import DomainConfig, HttpConfig

# The types whose requests take `image` (the platform's API: messengers and MMS).
IMAGE_TYPES = frozenset({"viber", "whatsapp", "telegram", "vk", "ok", "bot", "mms"})
DEFAULT_MAX_SIZE = 5 * 1024 * 1024  # the picture as it came, before decoding


def read_images(
    domain: DomainConfig, data: dict[str, Any], path: str, problems: v.Problems, known_type: bool
) -> DomainConfig:
    """The domain with its `images` and `images_max_size` read."""
    images = v.value(data, "images", path, v.boolean, False, problems)
    max_size = v.value(data, "images_max_size", path, v.positive_size, DEFAULT_MAX_SIZE, problems)
    if images and known_type and domain.type not in IMAGE_TYPES:
        problems.add(
            f"{path}.images",
            f"only for types {', '.join(sorted(IMAGE_TYPES))} (this domain is {domain.type})",
        )
    return dataclasses.replace(domain, images=images, images_max_size=max_size)


def check_images(
    domains: Mapping[str, DomainConfig], http: HttpConfig | None, problems: v.Problems
) -> None:
    """What the domains with `images: true` need from the rest of the config and the machine."""
    named = [name for name, domain in domains.items() if domain.images]
    if not named:
        return
    if http is None or not http.public_url:
        for name in named:
            problems.add(
                f"domains[{name}].images",
                "needs http.public_url (the platform fetches the picture from there)",
            )
    try:
        import PIL.Image  # noqa: F401 - only to know it is there
    except ImportError:
        problems.add(
            f"domains[{named[0]}].images",
            "needs Pillow, which decodes and re-encodes the pictures:"
            " pip install 'smtp2pulse[images]' (or the distribution's python3-pil)",
        )
