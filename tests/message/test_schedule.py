"""When to send: quiet hours (across midnight, across DST changes), urgent mail, and the RFC 4021
headers Deferred-Delivery and Expires — over real SMTP, as the fake platform receives them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from gateway.config.loader import parse_config
from gateway.errors import ConfigError
from tests.conftest import Running, base_config, merge, text_message
from tests.fakeplatform import FakePlatform
from tests.message.test_prepare import preview

Start = Callable[..., Awaitable[Running]]
MOSCOW = {"domains": {"sms.local": {"quiet_hours": "22:00-08:00", "timezone": "Europe/Moscow"}}}
BERLIN = {"domains": {"sms.local": {"quiet_hours": "22:00-08:00", "timezone": "Europe/Berlin"}}}


def utc(year: int, month: int, day: int, hour: int, minute: int) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


async def sent(
    gw: Running, platform: FakePlatform, arrived: float, **headers: str
) -> dict[str, str]:
    """The form the platform receives for one mail that arrives at `arrived` (a UTC instant)."""
    gw.gateway.smtp.handler.clock = lambda: arrived
    before = len(platform.requests)
    await gw.send(text_message("Alert", "db1", **headers), "79001234567@sms.local")
    return (await platform.wait_for(before + 1))[before].form


@pytest.mark.parametrize(
    ("arrived", "sent_date"),
    [
        (utc(2026, 12, 2, 18, 59), None),  # 21:59 in Moscow
        (utc(2026, 12, 2, 19, 0), "2026-12-03 08:00"),  # 22:00: the window starts
        (utc(2026, 12, 2, 20, 30), "2026-12-03 08:00"),  # 23:30: across midnight
        (utc(2026, 12, 3, 0, 15), "2026-12-03 08:00"),  # 03:15
        (utc(2026, 12, 3, 4, 59), "2026-12-03 08:00"),  # 07:59
        (utc(2026, 12, 3, 5, 0), None),  # 08:00: the window is over
    ],
)
async def test_quiet_hours_across_midnight(
    start_gateway: Start, platform: FakePlatform, arrived: float, sent_date: str | None
) -> None:
    gw = await start_gateway(MOSCOW)
    assert (await sent(gw, platform, arrived)).get("sent_date") == sent_date


@pytest.mark.parametrize(
    ("arrived", "sent_date"),
    [
        # Spring forward, Sunday 28 March 2027: 02:00 CET becomes 03:00 CEST.
        (utc(2027, 3, 27, 21, 30), "2027-03-28 08:00"),  # 22:30 CET
        (utc(2027, 3, 28, 5, 30), "2027-03-28 08:00"),  # 07:30 CEST (06:30 in CET)
        (utc(2027, 3, 28, 6, 30), None),  # 08:30 CEST: awake (07:30 in CET)
        # Fall back, Sunday 25 October 2026: 03:00 CEST becomes 02:00 CET.
        (utc(2026, 10, 25, 6, 30), "2026-10-25 08:00"),  # 07:30 CET (08:30 in CEST)
        (utc(2026, 10, 25, 7, 0), None),  # 08:00 CET
    ],
)
async def test_quiet_hours_follow_a_dst_change(
    start_gateway: Start, platform: FakePlatform, arrived: float, sent_date: str | None
) -> None:
    gw = await start_gateway(BERLIN)
    assert (await sent(gw, platform, arrived)).get("sent_date") == sent_date


async def test_a_window_ending_in_the_hour_a_dst_change_skips_ends_an_hour_later(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway(
        merge(BERLIN, {"domains": {"sms.local": {"quiet_hours": "23:00-02:30"}}})
    )
    # Midnight CET; 02:30 does not exist that night, the clocks read 03:30 instead.
    form = await sent(gw, platform, utc(2027, 3, 27, 23, 0))
    assert form["sent_date"] == "2027-03-28 03:30"


async def test_urgent_mail_passes_when_the_domain_says_so(
    start_gateway: Start, platform: FakePlatform
) -> None:
    night = utc(2026, 12, 2, 20, 30)
    gw = await start_gateway(
        merge(MOSCOW, {"domains": {"sms.local": {"quiet_hours_urgent": "send"}}})
    )
    assert "sent_date" not in await sent(gw, platform, night, X_Priority="1 (Highest)")
    assert "sent_date" not in await sent(gw, platform, night, Importance="High")
    assert (await sent(gw, platform, night, X_Priority="3"))["sent_date"] == "2026-12-03 08:00"


async def test_urgent_mail_waits_too_by_default(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway(MOSCOW)
    form = await sent(gw, platform, utc(2026, 12, 2, 20, 30), X_Priority="1")
    assert form["sent_date"] == "2026-12-03 08:00"


async def test_deferred_delivery_and_expires_where_allowed(
    start_gateway: Start, platform: FakePlatform
) -> None:
    noon = utc(2026, 12, 2, 9, 0)  # 12:00 in Moscow
    gw = await start_gateway(
        merge(
            MOSCOW, {"domains": {"sms.local": {"allow_headers": ["send_date", "ttl"], "ttl": 60}}}
        )
    )
    form = await sent(
        gw,
        platform,
        noon,
        Deferred_Delivery="Wed, 02 Dec 2026 13:00:30 +0000",
        Expires="Wed, 02 Dec 2026 14:00:00 +0000",
    )
    assert (form["sent_date"], form["ttl"]) == ("2026-12-02 16:01", "60")
    # Deferred into the quiet hours: held to their end; Expires counts from then.
    form = await sent(
        gw,
        platform,
        noon,
        Deferred_Delivery="Wed, 02 Dec 2026 20:00:00 +0000",
        Expiry_Date="Thu, 03 Dec 2026 06:30:00 +0000",
    )
    assert (form["sent_date"], form["ttl"]) == ("2026-12-03 08:00", "90")
    # In the past: sent now, and the ttl is at least a minute.
    form = await sent(
        gw,
        platform,
        noon,
        Deferred_Delivery="Tue, 01 Dec 2026 13:00:00 +0000",
        Expires="Tue, 01 Dec 2026 13:00:00 +0000",
    )
    assert ("sent_date" not in form, form["ttl"]) == (True, "1")
    # Not a date: ignored, the domain's ttl stays.
    form = await sent(gw, platform, noon, Deferred_Delivery="tomorrow", Expires="soon")
    assert ("sent_date" not in form, form["ttl"]) == (True, "60")
    # X-Pulse-* say exactly what the platform gets, and win.
    form = await sent(
        gw,
        platform,
        noon,
        X_Pulse_TTL="5",
        X_Pulse_Send_Date="2026-12-02 23:00",
        Expires="Wed, 02 Dec 2026 14:00:00 +0000",
    )
    assert (form["sent_date"], form["ttl"]) == ("2026-12-02 23:00", "5")


async def test_timing_headers_are_ignored_where_not_allowed(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway({"domains": {"sms.local": {"timezone": "Europe/Moscow"}}})
    form = await sent(
        gw,
        platform,
        utc(2026, 12, 2, 9, 0),
        Deferred_Delivery="Wed, 02 Dec 2026 13:00:00 +0000",
        Expires="Wed, 02 Dec 2026 14:00:00 +0000",
    )
    assert "sent_date" not in form and "ttl" not in form


def test_bad_quiet_hours_and_time_zones_name_their_key() -> None:
    data = {
        "api": {"token": "t"},
        "domains": {
            "a.local": {"type": "sms", "quiet_hours": "22-08", "timezone": "Mars/Olympus"},
            "b.local": {"type": "sms", "quiet_hours": "08:00-08:00", "quiet_hours_urgent": "now"},
            "c.local": {"type": "sms", "quiet_hours_urgent": "send"},
        },
    }
    with pytest.raises(ConfigError) as error:
        parse_config(data, env={})
    assert error.value.problems == [
        "domains[a.local].timezone: 'Mars/Olympus' is not a time zone this machine knows (an "
        "IANA name such as Europe/Moscow; install the tz database or the tzdata package)",
        "domains[a.local].quiet_hours: '22-08' is not a window HH:MM-HH:MM (e.g. \"22:00-08:00\")",
        "domains[b.local].quiet_hours: '08:00-08:00' is an empty window (start and end are "
        "the same)",
        "domains[b.local].quiet_hours_urgent: 'now' is not one of wait, send",
        "domains[c.local].quiet_hours_urgent: needs quiet_hours",
    ]


async def test_preview_gives_the_sent_date_the_daemon_gives(
    start_gateway: Start, platform: FakePlatform, tmp_path: Path
) -> None:
    # A window around this very moment, so preview (its own process, its own clock) and the
    # daemon both see the mail arrive inside it.
    now = datetime.now(UTC)
    window = f"{(now - timedelta(hours=1)):%H:%M}-{(now + timedelta(hours=2)):%H:%M}"
    changes = {"domains": {"sms.local": {"quiet_hours": window, "timezone": "UTC"}}}
    gw = await start_gateway(changes)
    message = text_message("Alert", "db1")
    await gw.send(message, "79001234567@sms.local")
    [received] = await platform.wait_for(1)
    config = tmp_path / "preview.yaml"
    config.write_text(
        yaml.safe_dump(merge(base_config(tmp_path / "spool.sqlite3", platform.base_url), changes))
    )
    [printed] = await asyncio.to_thread(
        preview, config, message.as_bytes(), ["79001234567@sms.local"]
    )
    assert (
        printed["form"]["sent_date"]
        == received.form["sent_date"]
        == (f"{now + timedelta(hours=2):%Y-%m-%d %H:%M}")
    )


NEW_YORK = {
    "domains": {
        "sms.local": {
            "quiet_hours": "22:00-08:00",
            "timezone": "America/New_York",
            "allow_headers": ["send_date", "ttl"],
        }
    }
}


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        # 9999-12-31 23:59 in New York is past the last instant a datetime holds (in UTC).
        (
            {"X_Pulse_Send_Date": "9999-12-31 23:59"},
            "X-Pulse-Send-Date: '9999-12-31 23:59' is out of range",
        ),
        # Inside quiet hours on the last day there is: held to a morning that does not exist.
        (
            {"Deferred_Delivery": "Fri, 31 Dec 9999 23:30:00 -0500"},
            "Deferred-Delivery: 'Fri, 31 Dec 9999 23:30:00 -0500' is out of range",
        ),
        # str.isdigit takes "²"; int() does not.
        ({"X_Pulse_TTL": "²"}, "X-Pulse-TTL: '²' is not a number of minutes"),
        ({"X_Pulse_TTL": "0"}, "X-Pulse-TTL: '0' is not a number of minutes"),
        # 5,000 digits: int() refuses more than 4,300 of them.
        (
            {"X_Pulse_TTL": "9" * 5000},
            f"X-Pulse-TTL: '{'9' * 60}…' is over the maximum of 525600 minutes (365 days)",
        ),
        (
            {"X_Pulse_TTL": "525601"},
            "X-Pulse-TTL: '525601' is over the maximum of 525600 minutes (365 days)",
        ),
        # Expires in 9999: a ttl of 4,193,427,060 minutes before the fix.
        (
            {"Expires": "Fri, 31 Dec 9999 12:00:00 +0000"},
            "Expires: 'Fri, 31 Dec 9999 12:00:00 +0000' is over the maximum of 525600 minutes "
            "(365 days) away",
        ),
    ],
)
async def test_timing_headers_out_of_range_are_refused_for_good(
    start_gateway: Start, platform: FakePlatform, headers: dict[str, str], reason: str
) -> None:
    gw = await start_gateway(NEW_YORK)
    gw.gateway.smtp.handler.clock = lambda: utc(2026, 12, 2, 17, 0)  # noon in New York
    message = text_message("Alert", "db1", **headers)

    def run() -> tuple[int, bytes]:
        with gw.client() as client:
            client.mail("app@corp.test")
            client.rcpt("79001234567@sms.local")
            return client.data(message.as_bytes())

    code, text = await asyncio.to_thread(run)
    assert (code, text.decode()) == (550, f"5.6.0 {reason}")
    # The gateway goes on: a good one after it is sent.
    form = await sent(
        gw,
        platform,
        utc(2026, 12, 2, 17, 0),
        X_Pulse_TTL="525600",
        X_Pulse_Send_Date="9999-12-30 23:59",
    )
    assert (form["ttl"], form["sent_date"]) == ("525600", "9999-12-30 23:59")
    assert len(platform.requests) == 1
