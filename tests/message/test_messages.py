"""Real-world message shapes over SMTP: what exactly reaches the platform."""

from __future__ import annotations

import base64
import quopri
from collections.abc import Awaitable, Callable

import pytest

from tests.conftest import Running
from tests.fakeplatform import FakePlatform

RUSSIAN = "Привет, мир! Заказ 42 готов, ждём Вас"


def raw_message(body: bytes, headers: str) -> bytes:
    return headers.replace("\n", "\r\n").encode("ascii") + b"\r\n" + body


@pytest.mark.parametrize("charset", ["utf-8", "cp1251", "koi8-r", "iso-8859-5"])
@pytest.mark.parametrize("encoding", ["8bit", "quoted-printable", "base64"])
async def test_charsets_and_transfer_encodings(
    gw: Running, platform: FakePlatform, charset: str, encoding: str
) -> None:
    body = (RUSSIAN + "\n").encode(charset)
    if encoding == "quoted-printable":
        body = quopri.encodestring(body)
    elif encoding == "base64":
        body = base64.encodebytes(body)
    raw = raw_message(
        body.replace(b"\n", b"\r\n"),
        (
            "From: crm@corp.test\nSubject: Test\nMIME-Version: 1.0\n"
            f"Content-Type: text/plain; charset={charset}\n"
            f"Content-Transfer-Encoding: {encoding}\n"
        ),
    )
    await gw.send(raw, "79001234567@sms.local")
    [request] = await platform.wait_for(1)
    assert request.form["sent_text"] == f"Test\n{RUSSIAN}"


@pytest.mark.parametrize(
    ("header", "subject"),
    [
        ("=?UTF-8?B?0JfQsNC60LDQtyDQs9C+0YLQvtCy?=", "Заказ готов"),
        ("=?windows-1251?Q?=C7=E0=EA=E0=E7_=E3=EE=F2=EE=E2?=", "Заказ готов"),
        ("=?koi8-r?B?+sHLwdogx8/Uz9c=?=", "Заказ готов"),
        ("Order =?UTF-8?Q?=E2=84=96?= 42", "Order № 42"),
    ],
)
async def test_rfc2047_subjects(
    gw: Running, platform: FakePlatform, header: str, subject: str
) -> None:
    raw = raw_message(b"body\r\n", f"From: crm@corp.test\nSubject: {header}\n")
    await gw.send(raw, "79001234567@sms.local")
    [request] = await platform.wait_for(1)
    assert request.form["sent_text"] == f"{subject}\nbody"


async def test_legacy_8bit_cp1251_without_mime_headers(gw: Running, platform: FakePlatform) -> None:
    # What 1C and old CRMs send: raw CP1251 bytes, no MIME headers at all.
    raw = "Subject: Оплата получена\r\n\r\nСпасибо за оплату\r\n".encode("cp1251")
    await gw.send(raw, "79001234567@sms.local")
    [request] = await platform.wait_for(1)
    assert request.form["sent_text"] == "Оплата получена\nСпасибо за оплату"


async def test_html_only_gets_readable_text_and_html_for_email(
    gw: Running, platform: FakePlatform
) -> None:
    html = (
        "<html><head><style>p {color: red}</style></head><body>"
        "<h1>Order&nbsp;42</h1><p>Ready at <b>Main&amp;Co</b>.</p>"
        "<ul><li>Tea</li><li>Cake</li></ul><script>alert(1)</script></body></html>"
    )
    raw = raw_message(
        html.encode() + b"\r\n",
        (
            "From: shop@corp.test\nSubject: Status\nMIME-Version: 1.0\n"
            "Content-Type: text/html; charset=utf-8\n"
        ),
    )
    await gw.send(raw, ["79001234567@sms.local", "ivan=example.com@mail.local"])
    requests = await platform.wait_for(2)
    by_type = {r.form["type"]: r.form for r in requests}
    text = by_type["sms"]["sent_text"]
    assert text.startswith("Status\nOrder 42")
    assert "Ready at Main&Co." in text and "- Tea\n- Cake" in text
    assert "<" not in text and "alert" not in text and "color" not in text
    assert "html_text" not in by_type["sms"]
    assert by_type["email"]["html_text"] == html
    assert by_type["email"]["sent_text"] == text


async def test_multipart_mixed_with_attachment(gw: Running, platform: FakePlatform) -> None:
    from email.message import EmailMessage

    message = EmailMessage()
    message["From"] = "ups@corp.test"
    message["Subject"] = "UPS on battery"
    message.set_content("Input power lost at 03:12.")
    message.add_attachment(
        b"%PDF-1.4 ...", maintype="application", subtype="pdf", filename="report.pdf"
    )
    await gw.send(message, "79001234567@sms.local")
    [request] = await platform.wait_for(1)
    assert request.form["sent_text"] == "UPS on battery\nInput power lost at 03:12."
    assert "PDF" not in request.raw.decode()


async def test_template_signature_and_max_length(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway(
        {
            "domains": {
                "sms.local": {
                    "type": "sms",
                    "text": "[{from_name}] {subject}: {body}",
                    "max_length": 30,
                }
            }
        }
    )
    raw = raw_message(
        b"Disk /var is 95% full   \r\n\r\n-- \r\nZabbix server\r\n",
        ("From: Zabbix <zabbix@corp.test>\nSubject: PROBLEM\n"),
    )
    await gw.send(raw, "79001234567@sms.local")
    [request] = await platform.wait_for(1)
    assert request.form["sent_text"] == "[Zabbix] PROBLEM: Disk /var i…"  # 30 with the …


async def test_header_overrides_allowed_and_forbidden(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway(
        {
            "domains": {
                "sms.local": {
                    "type": "sms",
                    "sender": "MyShop",
                    "allow_headers": ["ttl", "send_date"],
                }
            }
        }
    )
    raw = raw_message(
        b"text\r\n",
        (
            "From: crm@corp.test\nSubject: S\nX-Pulse-Sender: Evil\nX-Pulse-TTL: 15\n"
            "X-Pulse-Send-Date: 2026-12-31 23:59\nX-Pulse-Image: https://x.example/i.png\n"
        ),
    )
    await gw.send(raw, "79001234567@sms.local")
    [request] = await platform.wait_for(1)
    assert request.form == {
        "token": request.form["token"],
        "type": "sms",
        "sent_to": "79001234567",
        "sent_text": "S\ntext",
        "sender": "MyShop",
        "ttl": "15",
        "sent_date": "2026-12-31 23:59",
    }


async def test_charset_field_encodes_the_text_for_the_platform(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    gw = await start_gateway({"domains": {"sms.local": {"type": "sms", "charset": "CP1251"}}})
    from urllib.parse import parse_qsl

    platform.decode_as = lambda raw: dict(parse_qsl(raw.decode("ascii"), encoding="cp1251"))
    raw = "Subject: Тест\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nтекст\r\n".encode()
    await gw.send(raw, "79001234567@sms.local")
    [request] = await platform.wait_for(1)
    assert request.form["charset"] == "CP1251"
    assert request.form["sent_text"] == "Тест\nтекст"
    assert b"sent_text=%D2%E5%F1%F2%0A" in request.raw  # CP1251 bytes, percent-encoded
