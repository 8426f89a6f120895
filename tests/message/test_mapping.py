"""Recipients and request fields (pure functions, the same ones the daemon and preview use)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config.loader import parse_config
from gateway.config.model import Config
from gateway.config.recipients import Recipient, resolve_recipients
from gateway.errors import Refusal
from gateway.message.mapping import build_request, strip_signature
from gateway.message.parse import ParsedMessage
from gateway.smtp.replies import reply_for


def config(**domain: Any) -> Config:
    settings = {"type": "sms", **domain}
    return parse_config(
        {"api": {"token": "t"}, "domains": {"d.local": settings, "mail.local": {"type": "email"}}},
        env={},
    )


def message(
    subject: str = "Subj", text: str = "Body", html: str | None = None, **headers: str
) -> ParsedMessage:
    return ParsedMessage(
        subject=subject,
        text=text,
        html=html,
        from_addr="crm@corp.test",
        from_name="CRM Robot",
        headers=headers,
        auto_submitted="",
        dropped_attachments=(),
        defects=0,
    )


def resolve_recipient(address: str, cfg: Config) -> Recipient:
    [recipient] = resolve_recipients(address, cfg)  # no aliases here: one person each
    return recipient


def request(cfg: Config, msg: ParsedMessage, to: str = "79001234567@d.local") -> dict[str, str]:
    recipient = resolve_recipient(to, cfg)
    return build_request(msg, recipient, cfg.domains[recipient.domain], "env@corp.test")


@pytest.mark.parametrize(
    ("local", "digits"),
    [
        ("79001234567", "79001234567"),
        ("+79001234567", "79001234567"),
        ("+7-900-123-45-67", "79001234567"),
        ("7.900.123.45.67", "79001234567"),
        ("442071234567", "442071234567"),
    ],
)
def test_phone_local_parts(local: str, digits: str) -> None:
    assert resolve_recipient(f"{local}@d.local", config()).sent_to == digits


def test_national_rewrite_applies_only_without_plus() -> None:
    cfg = config(rewrite=[{"match": r"^8(\d{10})$", "replace": r"7\1"}])
    assert resolve_recipient("89001234567@d.local", cfg).sent_to == "79001234567"
    assert resolve_recipient("8-900-123-45-67@d.local", cfg).sent_to == "79001234567"
    assert resolve_recipient("+89001234567@d.local", cfg).sent_to == "89001234567"


@pytest.mark.parametrize(
    "local",
    [
        "7900123456a",
        "+",
        "--",
        "7900 1234567",
        "7900+1234567",
        "7(900)1234567",
        "123456789",
        "1234567890123456",
        "-79001234567",
        "79001234567-",
    ],
)
def test_bad_phones_are_553(local: str) -> None:
    with pytest.raises(Refusal) as refusal:
        resolve_recipient(f"{local}@d.local", config())
    assert str(reply_for(refusal.value)).startswith("553 5.1.3 ")


def test_email_recipient() -> None:
    assert (
        resolve_recipient("ivan.petrov=Example.COM@mail.local", config()).sent_to
        == "ivan.petrov@example.com"
    )
    with pytest.raises(Refusal):
        resolve_recipient("ivan=nodot@mail.local", config())


def test_verbatim_recipient() -> None:
    cfg = config(recipient="verbatim")
    assert resolve_recipient("chat_12345@d.local", cfg).sent_to == "chat_12345"


def test_unknown_domain_is_550_5_7_1() -> None:
    with pytest.raises(Refusal) as refusal:
        resolve_recipient("79001234567@elsewhere.com", config())
    assert str(reply_for(refusal.value)).startswith("550 5.7.1 ")


def test_default_template_leaves_out_an_empty_part() -> None:
    assert request(config(), message(subject=""))["sent_text"] == "Body"
    assert request(config(), message(text=""))["sent_text"] == "Subj"
    with pytest.raises(Refusal) as refusal:
        request(config(), message(subject="", text=""))
    assert str(reply_for(refusal.value)).startswith("550 5.6.0 ")


def test_template_placeholders() -> None:
    cfg = config(text="{from_name} <{from}> to {to} ({recipient}@{domain}): {subject} / {body}")
    assert (
        request(cfg, message())["sent_text"]
        == "CRM Robot <crm@corp.test> to 79001234567@d.local (79001234567@d.local): Subj / Body"
    )


def test_text_is_trimmed_and_signature_dropped() -> None:
    msg = message(subject="S", text="\n\nline one   \nline two\t\n\n-- \nBest regards\nBob\n\n")
    assert request(config(), msg)["sent_text"] == "S\nline one\nline two"
    assert (
        request(config(strip_signature=False), msg)["sent_text"]
        == "S\nline one\nline two\n\n--\nBest regards\nBob"
    )


@given(st.text(st.sampled_from("-- \t\n\u3000ab")))
def test_strip_signature_shortcut(body: str) -> None:
    # The definition, without the shortcut for bodies that have no "--" at all.
    lines = body.split("\n")
    cut = [i for i, line in enumerate(lines) if line.rstrip() == "--"]
    assert strip_signature(body) == ("\n".join(lines[: cut[-1]]) if cut else body)


def test_max_length_cuts_with_an_ellipsis() -> None:
    text = request(config(max_length=10), message(subject="", text="0123456789ABCDEF"))
    assert text["sent_text"] == "012345678…"
    assert len(text["sent_text"]) == 10


def test_html_only_for_types_that_use_it() -> None:
    html = "<p>Hi</p>"
    assert "html_text" not in request(config(), message(html=html))
    assert request(config(type="push"), message(html=html))["html_text"] == html
    assert "html_text" not in request(config(type="push", html=False), message(html=html))
    assert "html_text" not in request(
        config(type="email"), message(html=None), "a=b.example@mail.local"
    )


def test_domain_fields_go_into_every_request() -> None:
    cfg = config(sender="Shop", ttl=30, find_token=True)
    assert request(cfg, message()) == {
        "type": "sms",
        "sent_to": "79001234567",
        "sent_text": "Subj\nBody",
        "sender": "Shop",
        "ttl": "30",
        "find_token": "1",
    }


def test_header_overrides_only_where_allowed() -> None:
    headers = {
        "x-pulse-sender": "Other",
        "x-pulse-ttl": "5",
        "x-pulse-send-date": "2026-12-01 09:30",
        "x-pulse-button": "Go",
        "x-pulse-action": "https://a.example",
        "x-pulse-image": "https://i.example/x",
    }
    locked = request(config(sender="Shop"), message(**headers))
    assert locked["sender"] == "Shop" and "ttl" not in locked and "sent_date" not in locked
    opened = request(
        config(
            sender="Shop", allow_headers=["sender", "ttl", "send_date", "button", "action", "image"]
        ),
        message(**headers),
    )
    assert {k: opened[k] for k in ("sender", "ttl", "sent_date", "button", "action", "image")} == {
        "sender": "Other",
        "ttl": "5",
        "sent_date": "2026-12-01 09:30",
        "button": "Go",
        "action": "https://a.example",
        "image": "https://i.example/x",
    }


@pytest.mark.parametrize(
    ("header", "value"), [("x-pulse-ttl", "soon"), ("x-pulse-send-date", "tomorrow")]
)
def test_bad_allowed_override_is_550_5_6_0(header: str, value: str) -> None:
    cfg = config(allow_headers=["ttl", "send_date"])
    with pytest.raises(Refusal) as refusal:
        request(cfg, message(**{header: value}))
    assert str(reply_for(refusal.value)).startswith("550 5.6.0 ")
