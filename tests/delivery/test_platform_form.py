"""The form encoding the platform receives decodes back to exactly what the gateway meant."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, quote_plus

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.delivery.batch import MAX_BATCH_BYTES, encode_batch, form_bytes
from gateway.delivery.request import encode_form, form_value
from tests.conftest import Running, text_message
from tests.fakeplatform import FakePlatform

CODECS = ["utf-8", "cp1251", "utf-16-be", "utf-16-le"]


@settings(max_examples=300, deadline=None)
@given(st.text(), st.sampled_from(CODECS))
def test_form_value_decodes_to_the_same_bytes_as_quote_plus(value: str, codec: str) -> None:
    ours = form_value(value, codec)
    theirs = quote_plus(value, encoding=codec, errors="replace")
    # Decoded as latin-1: the bytes as they were, whatever the codec.
    assert parse_qsl("v=" + ours, encoding="latin-1") == parse_qsl(
        "v=" + theirs, encoding="latin-1"
    ) or (value == "" and ours == theirs == "")
    assert ours.isascii() and "&" not in ours and "=" not in ours


def test_a_request_round_trips_through_form_decoding() -> None:
    request = {
        "type": "sms",
        "sent_to": "79001234567",
        "sent_text": "Заказ 42 готов & ждёт",
        "sender": "Shop",
        "charset": "CP1251",
    }
    body = encode_form(request, "tok")
    pairs = dict(parse_qsl(body.decode("ascii"), encoding="cp1251"))
    assert pairs == {"token": "tok", **request}
    # ASCII fields stay readable; the Cyrillic text is escaped octet by octet.
    assert b"sent_to=79001234567" in body and b"sent_text=%C7%E0%EA%E0%E7" in body


async def test_a_batch_is_cut_where_its_form_would_pass_the_byte_bound(
    start_gateway: Callable[..., Awaitable[Running]], platform: FakePlatform
) -> None:
    """Each message carries its own copy of a shared text: five copies of 110,000 Cyrillic
    characters are ~3.3 MB of form, more than MAX_BATCH_BYTES (issue 29, 6)."""
    # A timeout would send a request again: a busy test machine must not make one of a 2 MB form.
    gw = await start_gateway(
        {
            "api": {"batch_size": 10, "batch_wait": 0, "timeout": "30s"},
            "smtp": {"max_message_size": "1MiB"},
        }
    )
    text = "Счёт на оплату готов. " * 5000
    numbers = [f"7900123450{n}" for n in range(5)]
    queue_id = await gw.submit(text_message(body=text), [f"{n}@sms.local" for n in numbers])
    assert await gw.wait_final(queue_id, within=20) == ["sent"] * 5
    assert sorted(m["sent_to"] for m in platform.messages) == numbers  # each once
    sizes = [len(received.raw) for received in platform.requests]
    assert all(size <= MAX_BATCH_BYTES for size in sizes), sizes
    assert max(len(received.messages) for received in platform.requests) > 1, sizes
    assert all(m["sent_text"].startswith("Hello\n" + text[:100]) for m in platform.messages)


def test_form_bytes_is_never_less_than_the_form_itself() -> None:
    from urllib.parse import quote_plus as plus

    for text in ("short", "Привет" * 2000, 'a\n"b"\\' * 3000, "\x01" * 500, "€" * 5000):
        fields = {"sent_to": "79001234567", "sent_text": text, "callback": "https://x/?a=1"}
        encoded = len(encode_batch([fields], "tok")) - len("token=tok&messages=")
        assert form_bytes(fields) >= encoded - len(plus("[]")), text[:10]
