"""The whole path: smtplib → gateway on 127.0.0.1 → spool → fake platform over real HTTP."""

from __future__ import annotations

import smtplib
from email import policy
from email.message import EmailMessage

import pytest

from tests.conftest import TOKEN, Running, text_message
from tests.fakeplatform import FakePlatform


async def test_plain_message_becomes_one_send_message_call(
    gw: Running, platform: FakePlatform
) -> None:
    await gw.send(text_message("Order 42", "Your order is ready."), "79001234567@sms.local")
    [request] = await platform.wait_for(1)
    assert request.method == "POST"
    assert request.path == "/api/v1/bulk/send-message"
    assert request.content_type == "application/x-www-form-urlencoded"
    assert request.form == {
        "token": TOKEN,
        "type": "sms",
        "sent_to": "79001234567",
        "sent_text": "Order 42\nYour order is ready.",
        "sender": "MyShop",
    }


async def test_each_recipient_gets_its_own_call_with_its_domain_settings(
    gw: Running, platform: FakePlatform
) -> None:
    message = text_message("Hi", "Body text")
    message.add_alternative("<p>Body <b>text</b></p>", subtype="html")
    await gw.send(
        message,
        ["79001234567@sms.local", "ivan=example.com@mail.local", "+7-900-765.43.21@sms.local"],
    )
    requests = await platform.wait_for(3)
    by_to = {r.form["sent_to"]: r.form for r in requests}
    assert set(by_to) == {"79001234567", "ivan@example.com", "79007654321"}
    assert "html_text" not in by_to["79001234567"]  # sms does not use html
    assert by_to["ivan@example.com"]["type"] == "email"
    assert by_to["ivan@example.com"]["sender"] == "shop@example.com"
    assert by_to["ivan@example.com"]["html_text"] == "<p>Body <b>text</b></p>"
    assert by_to["ivan@example.com"]["sent_text"] == "Hi\nBody text"


async def test_envelope_decides_not_the_to_header(gw: Running, platform: FakePlatform) -> None:
    message = text_message("Bcc", "hidden")
    message.replace_header("To", "79990000000@sms.local")
    await gw.send(message, "79001112233@sms.local")
    [request] = await platform.wait_for(1)
    assert request.form["sent_to"] == "79001112233"


async def test_250_names_the_queue_id_and_queue_show_has_it(
    gw: Running, platform: FakePlatform
) -> None:
    def run() -> tuple[int, bytes]:
        with gw.client() as client:
            client.mail("app@corp.test")
            client.rcpt("79001234567@sms.local")
            return client.data(text_message().as_bytes())

    import asyncio

    code, text = await asyncio.to_thread(run)
    assert code == 250
    assert text.startswith(b"2.0.0 Ok: queued as ")
    queue_id = text.rsplit(b" ", 1)[1].decode()
    await platform.wait_for(1)
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None and detail.queue_id == queue_id
    assert [d.recipient for d in detail.deliveries] == ["79001234567@sms.local"]


async def test_duplicate_recipient_in_one_envelope_is_sent_once(
    gw: Running, platform: FakePlatform
) -> None:
    await gw.send(text_message(), ["79001234567@sms.local", "+79001234567@sms.local"])
    await platform.wait_for(1)
    await gw.gateway.worker.stop(1)  # nothing else may be in flight
    assert len(platform.requests) == 1


@pytest.mark.parametrize("body", ["", "   \n\n  "])
async def test_nothing_to_send_is_550_5_6_0(gw: Running, platform: FakePlatform, body: str) -> None:
    message = text_message(subject="", body=body)
    del message["Subject"]
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await gw.send(message, "79001234567@sms.local")
    assert refused.value.smtp_code == 550
    error = refused.value.smtp_error
    assert isinstance(error, bytes) and error.startswith(b"5.6.0 ")
    assert platform.requests == []


async def test_8bitmime_and_smtputf8_are_offered(gw: Running) -> None:
    import asyncio

    def run() -> bytes:
        with gw.client() as client:
            return client.ehlo_resp or b""

    features = await asyncio.to_thread(run)
    for keyword in (b"8BITMIME", b"SMTPUTF8", b"SIZE 65536", b"ENHANCEDSTATUSCODES", b"PIPELINING"):
        assert keyword in features


async def test_smtputf8_envelope_and_utf8_headers(gw: Running, platform: FakePlatform) -> None:
    import asyncio

    message = EmailMessage()
    message["From"] = "Отдел продаж <продажи@пример.рф>"
    message["Subject"] = "Заказ готов"
    message.set_content("Заберите до пятницы")
    raw = message.as_bytes(policy=policy.default.clone(utf8=True))

    def run() -> dict[str, tuple[int, bytes]]:
        with gw.client() as client:
            return client.sendmail(
                "продажи@пример.рф",
                ["79001234567@sms.local"],
                raw,
                mail_options=["SMTPUTF8", "BODY=8BITMIME"],
            )

    await asyncio.to_thread(run)
    [request] = await platform.wait_for(1)
    assert request.form["sent_text"] == "Заказ готов\nЗаберите до пятницы"
