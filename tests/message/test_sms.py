"""SMS parts and cost: segments at the 160/153 and 70/67 boundaries, `max_parts`, ICAO 9303
transliteration — counted by the running gateway over real SMTP, as the fake platform and
/metrics see them, and printed by `preview` the same."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.config.loader import parse_config
from gateway.errors import ConfigError
from gateway.message.sms import Segments, fit, segments
from gateway.message.translit import transliterate
from tests.conftest import Running, base_config, eventually, merge, text_message
from tests.fakeplatform import FakePlatform
from tests.message.test_prepare import preview

Start = Callable[..., Awaitable[Running]]
HTTP = {
    "http": {
        "listen": "127.0.0.1:0",
        "public_url": "https://gw.example.com",
        "callback_secret": "callback-secret-0123456789",
    }
}
DOWN = "Server db1 is down. " * 10
RU = "Сервер db1 не отвечает, проверьте диск. " * 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a" * 160, Segments("GSM-7", 160, 1)),
        ("a" * 161, Segments("GSM-7", 161, 2)),
        ("a" * 306, Segments("GSM-7", 306, 2)),  # 2 x 153
        ("a" * 307, Segments("GSM-7", 307, 3)),
        ("€" * 80, Segments("GSM-7", 160, 1)),  # the extension table counts double
        ("a" * 159 + "^", Segments("GSM-7", 161, 2)),
        # 306 septets, but the escape pair of € is not split at 153: three parts.
        ("a" * 152 + "€" + "a" * 152, Segments("GSM-7", 306, 3)),
        ("я" * 70, Segments("UCS-2", 70, 1)),
        ("я" * 71, Segments("UCS-2", 71, 2)),
        ("я" * 134, Segments("UCS-2", 134, 2)),  # 2 x 67
        ("я" * 135, Segments("UCS-2", 135, 3)),
        ("a" * 69 + "…", Segments("UCS-2", 70, 1)),  # one non-GSM-7 character: all UCS-2
        ("😀" * 35, Segments("UCS-2", 70, 1)),  # outside the BMP: two units
        ("a" * 66 + "😀", Segments("UCS-2", 68, 1)),
        ("a" * 66 + "😀" + "a" * 66, Segments("UCS-2", 134, 3)),  # the pair is not split
        ("", Segments("GSM-7", 0, 1)),
    ],
)
def test_segments_at_the_boundaries(text: str, expected: Segments) -> None:
    assert segments(text) == expected


def test_a_cut_ends_at_a_word_with_the_ellipsis_counted() -> None:
    assert fit("short", 1) == "short"
    # The … makes a GSM-7 text UCS-2: at most 70 units with it, not 160; back to the word.
    assert fit(DOWN.strip(), 1) == (
        "Server db1 is down. Server db1 is down. Server db1 is down. Server…"
    )
    assert fit("x" * 500, 2) == "x" * 133 + "…"  # no word boundary near: cut the word
    assert segments(fit("я" * 500, 3)) == Segments("UCS-2", 201, 3)


def test_icao_9303_transliteration_is_gsm7() -> None:
    assert transliterate("Съешь же ещё этих мягких французских булок, да выпей чаю") == (
        "Sieesh zhe eshche etikh miagkikh frantsuzskikh bulok, da vypei chaiu"
    )
    assert transliterate("ЩИ и Щи, Жанна, ЮЛЯ") == "SHCHI i Shchi, Zhanna, IULIA"
    assert transliterate("«Ёлка» — 5 ₽… ça\u00a0va") == '"Elka" - 5 RUB... ca va'
    assert transliterate("Привет 😀") == "Привет 😀"  # cannot be GSM-7: sent as it was
    assert transliterate("plain ASCII [ok]") == "plain ASCII [ok]"


def test_max_parts_and_transliterate_are_for_sms_types_only() -> None:
    data = {
        "api": {"token": "t"},
        "domains": {
            "tg.local": {"type": "telegram", "max_parts": 2, "transliterate": True},
            "sms.local": {"type": "sms", "max_parts": 0},
        },
    }
    with pytest.raises(ConfigError) as error:
        parse_config(data, env={})
    assert error.value.problems == [
        "domains[tg.local].max_parts: only for types bulk, sms (this domain is telegram)",
        "domains[tg.local].transliterate: only for types bulk, sms (this domain is telegram)",
        "domains[sms.local].max_parts: 0 is out of range (from 1 to 255)",
    ]


async def sent_texts(gw: Running, platform: FakePlatform, *bodies: str) -> list[str]:
    for body in bodies:
        await gw.send(text_message("", body), "79001234567@sms.local")
    received = await platform.wait_for(len(bodies))
    return [r.form["sent_text"] for r in received]


async def test_max_parts_cuts_what_the_platform_receives(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway({"domains": {"sms.local": {"max_parts": 2, "text": "{body}"}}})
    fits = "a" * 306
    assert await sent_texts(gw, platform, fits, "a" * 307, RU) == [
        fits,
        "a" * 133 + "…",  # with the … it is UCS-2: 2 x 67 units
        "Сервер db1 не отвечает, проверьте диск. Сервер db1 не отвечает, проверьте диск. "
        "Сервер db1 не отвечает, проверьте диск. Сервер db1 не…",
    ]


async def test_transliterated_text_stays_gsm7_and_its_cut_too(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway(
        {"domains": {"sms.local": {"max_parts": 1, "transliterate": True, "text": "{body}"}}}
    )
    assert await sent_texts(gw, platform, "Жёлтый щенок", RU, "Тест 😀") == [
        "Zheltyi shchenok",
        "Server db1 ne otvechaet, proverte disk. Server db1 ne otvechaet, proverte disk. "
        "Server db1 ne otvechaet, proverte disk. Server db1 ne otvechaet, proverte...",
        "Тест 😀",
    ]


async def test_parts_are_logged_and_counted_per_domain(
    start_gateway: Start, platform: FakePlatform, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "smtp2pulse.smtp")
    gw = await start_gateway(merge(HTTP, {"domains": {"sms.local": {"text": "{body}"}}}))
    await gw.send(text_message("", "я" * 71), ["79001234567@sms.local", "79007654321@sms.local"])
    await gw.send(text_message("", "a" * 160), "79001234567@sms.local")
    await gw.send(text_message("", "a" * 10), "ivan=example.com@mail.local")
    await platform.wait_for(4)
    accepted = [r.getMessage() for r in caplog.records if " accepted " in r.getMessage()]
    assert [
        line.split(" parts=")[1].split()[0] if " parts=" in line else None for line in accepted
    ] == ["4", "1", None]
    assert gw.gateway.status is not None
    host, port = gw.gateway.status.addresses[0]
    async with aiohttp.ClientSession() as session:

        async def parts() -> str:
            async with session.get(f"http://{host}:{port}/metrics") as response:
                return next(
                    (
                        line
                        for line in (await response.text()).splitlines()
                        if line.startswith("smtp2pulse_sms_parts_total")
                    ),
                    "",
                )

        async def five() -> bool:
            return await parts() == 'smtp2pulse_sms_parts_total{domain="sms.local"} 5.0'

        await eventually(five, every=0.02)  # the counter follows the platform's reply
        assert await parts() == 'smtp2pulse_sms_parts_total{domain="sms.local"} 5.0'


async def test_preview_prints_the_encoding_and_parts_the_daemon_sends(
    start_gateway: Start, platform: FakePlatform, tmp_path: Path
) -> None:
    changes = {
        "domains": {
            "sms.local": {
                "max_parts": 2,
                "transliterate": True,
                "text": "{body}",
                "aliases": {"duty": ["79001234567", "79007654321"]},
            }
        }
    }
    gw = await start_gateway(changes)
    message = text_message("", RU + "Тест 😀 " * 20)
    await gw.send(message, ["duty@sms.local"])
    received = sorted((r.form for r in await platform.wait_for(2)), key=lambda f: f["sent_to"])
    config = tmp_path / "preview.yaml"
    config.write_text(
        yaml.safe_dump(merge(base_config(tmp_path / "spool.sqlite3", platform.base_url), changes))
    )
    printed = await asyncio.to_thread(preview, config, message.as_bytes(), ["duty@sms.local"])
    assert [p["sms"] for p in printed] == [{"encoding": "UCS-2", "parts": 2}] * 2
    for form in received:
        form["token"] = "***"
    assert [p["form"] for p in printed] == received
    assert received[0]["sent_text"].endswith("…")
