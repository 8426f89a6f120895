"""The form encoding the platform receives decodes back to exactly what the gateway meant."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote_plus

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.delivery.request import encode_form, form_value

CODECS = ["utf-8", "cp1251", "utf-16-be", "utf-16-le"]


@settings(max_examples=300, deadline=None)
@given(st.text(), st.sampled_from(CODECS))
def test_form_value_decodes_to_the_same_bytes_as_quote_plus(value: str, codec: str) -> None:
    ours = form_value(value, codec)
    theirs = quote_plus(value, encoding=codec, errors="replace")
    decode = {"encoding": "latin-1"}   # bytes as they were, whatever the codec
    assert parse_qsl("v=" + ours, **decode) == parse_qsl("v=" + theirs, **decode) or \
        (value == "" and ours == theirs == "")
    assert ours.isascii() and "&" not in ours and "=" not in ours


def test_a_request_round_trips_through_form_decoding() -> None:
    request = {"type": "sms", "sent_to": "79001234567", "sent_text": "Заказ 42 готов & ждёт",
               "sender": "Shop", "charset": "CP1251"}
    body = encode_form(request, "tok")
    pairs = dict(parse_qsl(body.decode("ascii"), encoding="cp1251"))
    assert pairs == {"token": "tok", **request}
    # ASCII fields stay readable; the Cyrillic text is escaped octet by octet.
    assert b"sent_to=79001234567" in body and b"sent_text=%C7%E0%EA%E0%E7" in body
