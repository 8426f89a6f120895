"""Listeners with their own policy, real TLS (STARTTLS and SMTPS) and SMTP AUTH."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config.loader import parse_config
from gateway.errors import ConfigError
from tests.access_helpers import (
    PASSWORD,
    USER_TOKEN,
    Certificate,
    make_certificate,
    plain_auth,
    tls_section,
    users,
)
from tests.conftest import TOKEN, Running, text_message
from tests.fakeplatform import FakePlatform

Start = Callable[..., Awaitable[Running]]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


def secured(
    certificate: Certificate,
    *,
    listen: Any = "127.0.0.1:0",
    tls: dict[str, Any] | None = None,
    **auth: Any,
) -> dict[str, Any]:
    """STARTTLS on the plain listener, SMTPS beside it, user crm with its own token."""
    return {
        "smtp": {
            "listen": listen,
            "tls": tls_section(certificate, implicit_listen="127.0.0.1:0", **(tls or {})),
            "auth": {
                "users": users(crm={"token": USER_TOKEN, "domains": ["sms.local"]}, ops={}),
                **auth,
            },
        }
    }


def listener(gw: Running, implicit: bool) -> tuple[str, int]:
    """The plain (first) or the implicit-TLS (last) listener's address."""
    host, port = gw.gateway.smtp.addresses[-1 if implicit else 0]
    return host, port


def starttls_client(gw: Running, certificate: Certificate) -> smtplib.SMTP:
    client = smtplib.SMTP(*listener(gw, implicit=False), timeout=10)
    client.ehlo("client.test")
    client.starttls(context=certificate.client_context())
    client.ehlo("client.test")
    return client


async def test_starttls_then_auth_plain_sends_with_the_users_token(
    start_gateway: Start, certificate: Certificate, platform: FakePlatform
) -> None:
    gw = await start_gateway(secured(certificate, tls={"require_starttls": True}))

    def run() -> tuple[Any, ...]:
        with smtplib.SMTP(*listener(gw, implicit=False), timeout=10) as client:
            client.ehlo("client.test")
            offered_in_clear = client.has_extn("auth"), client.has_extn("starttls")
            before = client.mail("app@corp.test")
            client.starttls(context=certificate.client_context())
            client.ehlo("client.test")
            offered = client.has_extn("auth")
            client.login("crm", PASSWORD)  # smtplib picks PLAIN... or LOGIN; see below
            client.sendmail(
                "app@corp.test", ["79001234567@sms.local"], text_message("over TLS").as_bytes()
            )
            return offered_in_clear, before, offered

    offered_in_clear, before, offered = await asyncio.to_thread(run)
    assert offered_in_clear == (False, True)
    assert before == (530, b"5.7.0 Must issue a STARTTLS command first")
    assert offered is True
    [request] = await platform.wait_for(1)
    assert request.form["token"] == USER_TOKEN
    assert request.form["sent_to"] == "79001234567"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_smtps_with_each_mechanism(
    start_gateway: Start, certificate: Certificate, platform: FakePlatform, mechanism: str
) -> None:
    gw = await start_gateway(secured(certificate))

    def run() -> tuple[int, bytes]:
        host, port = listener(gw, implicit=True)
        with smtplib.SMTP_SSL(
            host, port, context=certificate.client_context(), timeout=10
        ) as client:
            client.ehlo("client.test")
            assert not client.has_extn("starttls")  # already encrypted
            assert sorted(client.esmtp_features["auth"].split()) == ["LOGIN", "PLAIN"]
            client.user, client.password = "ops", PASSWORD
            reply: tuple[int, bytes] = client.auth(
                mechanism,
                getattr(client, f"auth_{mechanism.lower()}"),
                initial_response_ok=mechanism == "PLAIN",
            )
            client.sendmail("app@corp.test", ["79001234567@sms.local"], text_message().as_bytes())
            return reply

    assert await asyncio.to_thread(run) == (235, b"2.7.0 Authentication successful")
    [request] = await platform.wait_for(1)
    assert request.form["token"] == TOKEN  # ops has no token of its own


async def test_auth_is_required_before_mail(start_gateway: Start, certificate: Certificate) -> None:
    gw = await start_gateway(secured(certificate))

    def run() -> tuple[int, bytes]:
        with starttls_client(gw, certificate) as client:
            return client.mail("app@corp.test")

    assert await asyncio.to_thread(run) == (530, b"5.7.0 Authentication required")


async def test_auth_is_not_offered_in_clear_unless_allowed(
    start_gateway: Start, certificate: Certificate, platform: FakePlatform
) -> None:
    gw = await start_gateway(secured(certificate))
    [ehlo_ok, auth] = await gw.dialog("EHLO again.test", plain_auth("crm"))
    assert b"AUTH" not in ehlo_ok[1]
    assert auth == (538, b"5.7.11 Encryption required for requested authentication mechanism")

    legacy = await start_gateway(
        {
            **secured(certificate, allow_without_tls=True),
            "spool": {"path": str(gw.gateway.config.spool.path) + "2"},
        }
    )

    def run() -> None:
        with legacy.client() as client:
            assert "PLAIN" in client.esmtp_features["auth"]
            client.login("crm", PASSWORD)
            client.sendmail("app@corp.test", ["79001234567@sms.local"], text_message().as_bytes())

    await asyncio.to_thread(run)
    assert [r.form["token"] for r in await platform.wait_for(1)] == [USER_TOKEN]


async def test_wrong_passwords_get_535_then_421_and_a_block(
    start_gateway: Start, certificate: Certificate, platform: FakePlatform
) -> None:
    gw = await start_gateway(secured(certificate, allow_without_tls=True))
    replies = await gw.dialog(
        plain_auth("crm", "wrong"), plain_auth("nobody", PASSWORD), plain_auth("crm", "wrong again")
    )
    assert replies[:2] == [(535, b"5.7.8 Authentication credentials invalid")] * 2
    assert replies[2] == (421, b"4.7.0 Too many failed logins from your address, try again later")

    def reconnect() -> tuple[int, bytes | str]:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP(gw.host, gw.port, timeout=10)
        return refused.value.smtp_code, refused.value.smtp_error

    assert (await asyncio.to_thread(reconnect))[0] == 421
    assert platform.requests == []


async def test_a_user_may_send_only_to_its_domains_and_sender_names(
    start_gateway: Start, certificate: Certificate, platform: FakePlatform
) -> None:
    config = secured(certificate)
    config["smtp"]["auth"]["users"]["crm"]["senders"] = ["OtherShop"]
    gw = await start_gateway(config)

    def run() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        with starttls_client(gw, certificate) as client:
            client.login("crm", PASSWORD)
            client.mail("app@corp.test")
            other_domain = client.rcpt("user=example.com@mail.local")
            client.rcpt("79001234567@sms.local")
            sender_name = client.data(text_message().as_bytes())  # sms.local says MyShop
            return other_domain, sender_name

    other_domain, sender_name = await asyncio.to_thread(run)
    assert other_domain == (550, b"5.7.1 User crm may not send to mail.local")
    assert sender_name == (550, b"5.7.1 User crm may not use the sender name 'MyShop'")
    assert platform.requests == []


async def test_compatibility_switch_takes_any_credentials_as_anonymous(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway(
        {"smtp": {"auth": {"accept_any_credentials": True, "allow_without_tls": True}}}
    )

    def run() -> tuple[int, bytes]:
        with gw.client() as client:
            reply: tuple[int, bytes] = client.login("printer", "whatever")
            client.sendmail(
                "printer@corp.test", ["79001234567@sms.local"], text_message().as_bytes()
            )
            return reply

    assert (await asyncio.to_thread(run))[0] == 235
    [request] = await platform.wait_for(1)
    assert request.form["token"] == TOKEN


async def test_a_failed_handshake_leaves_the_server_serving(
    start_gateway: Start, certificate: Certificate, platform: FakePlatform
) -> None:
    gw = await start_gateway(secured(certificate, allow_without_tls=True))

    def run() -> None:
        untrusting = ssl.create_default_context()  # does not know our self-signed CA
        with smtplib.SMTP(gw.host, gw.port, timeout=10) as client:
            client.ehlo("client.test")
            with pytest.raises(ssl.SSLError):
                client.starttls(context=untrusting)
        too_old = certificate.client_context()
        with warnings.catch_warnings():  # Python itself frowns on TLS 1.1, rightly
            warnings.simplefilter("ignore", DeprecationWarning)
            too_old.minimum_version = too_old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, OSError)):
            smtplib.SMTP_SSL(*listener(gw, implicit=True), context=too_old, timeout=10)
        with starttls_client(gw, certificate) as client:
            client.login("crm", PASSWORD)
            client.sendmail("app@corp.test", ["79001234567@sms.local"], text_message().as_bytes())

    await asyncio.to_thread(run)
    assert len(await platform.wait_for(1)) == 1


def test_tls_and_auth_problems_are_config_errors(tmp_path: Path, certificate: Certificate) -> None:
    base = {"api": {"token": "t"}, "domains": {"sms.local": {"type": "sms"}}}

    def problems(smtp: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
        with pytest.raises(ConfigError) as error:
            parse_config({**base, "smtp": smtp}, env=env or {})
        return error.value.problems

    missing = problems({"tls": {"cert": str(tmp_path / "none.pem"), "key": str(certificate.key)}})
    assert missing[0].startswith("smtp.tls.cert: cannot read the certificate")
    swapped = problems({"tls": {"cert": str(certificate.key), "key": str(certificate.cert)}})
    assert swapped[0].startswith("smtp.tls.cert: certificate")
    assert problems({"auth": {"users": users(crm={})}})[0].startswith(
        "smtp.auth.allow_without_tls: AUTH is required on 127.0.0.1:2525 but is offered only "
        "over TLS"
    )
    assert problems(
        {"auth": {"users": users(crm={"domains": ["nope.local"]})}, "tls": tls_section(certificate)}
    ) == ["smtp.auth.users.crm.domains: 'nope.local' is not one of the served domains"]
    assert problems({"listen": [{"address": "127.0.0.1:25", "require_starttls": True}]}) == [
        "smtp.listen[0].require_starttls: needs smtp.tls (cert and key)"
    ]
    assert problems({"auth": {"users": {"crm": {"password_hash": "secret"}}}})[0].startswith(
        "smtp.auth.users.crm.password_hash: is not a password hash"
    )

    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        f"api: {{token: t}}\ndomains: {{sms.local: {{type: sms}}}}\n"
        f"smtp: {{tls: {{cert: {tmp_path / 'gone.pem'}, key: /gone}}}}\n"
    )
    assert main(["check-config", "-c", str(config_file)]) == 78


def test_listener_policies_and_defaults(certificate: Certificate) -> None:
    from gateway.config.access import policy_for

    config = parse_config(
        {
            "api": {"token": "t"},
            "domains": {"sms.local": {"type": "sms"}},
            "smtp": {
                "listen": [
                    "127.0.0.1:25",
                    {"address": "0.0.0.0:587", "require_starttls": True},
                    {"address": "10.0.0.1:2525", "require_auth": False},
                ],
                "tls": tls_section(certificate, implicit_listen=["0.0.0.0:465"]),
                "auth": {"users": users(crm={})},
            },
        },
        env={},
    )
    smtp = config.smtp
    assert smtp.tls is not None and smtp.auth is not None
    policies = [policy_for(item, smtp) for item in (*smtp.listen, *smtp.tls.implicit_listen)]
    assert [(p.require_starttls, p.require_auth, p.implicit_tls) for p in policies] == [
        (False, True, False),
        (True, True, False),
        (False, False, False),
        (False, True, True),
    ]
    assert smtp.tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert smtp.auth.max_failures == 3 and smtp.auth.block_for == 300
    assert "correct" not in repr(config) and PASSWORD not in repr(config)
    assert "scrypt$" not in repr(config)


async def test_reload_brings_a_renewed_certificate_to_new_sessions(
    tmp_path: Path, certificate: Certificate, platform: FakePlatform
) -> None:
    import yaml

    from gateway.app import Gateway
    from gateway.config.loader import load_config
    from tests.conftest import base_config, merge

    renewed = make_certificate(tmp_path)
    path = tmp_path / "config.yaml"
    data = merge(base_config(tmp_path / "spool.sqlite3", platform.base_url), secured(certificate))
    path.write_text(yaml.safe_dump(data))
    gateway = Gateway(load_config(path))
    await gateway.start()
    try:
        data["smtp"]["tls"].update(cert=str(renewed.cert), key=str(renewed.key))
        path.write_text(yaml.safe_dump(data))
        assert await gateway.reload(path) is True
        gw = Running(gateway)

        def handshake(cert: Certificate, implicit: bool) -> None:
            if implicit:
                smtplib.SMTP_SSL(
                    *listener(gw, implicit=True), context=cert.client_context(), timeout=10
                ).quit()
            else:
                starttls_client(gw, cert).quit()

        for implicit in (False, True):
            await asyncio.to_thread(handshake, renewed, implicit)
            with pytest.raises(ssl.SSLError):
                await asyncio.to_thread(handshake, certificate, implicit)
    finally:
        await gateway.stop()


async def test_one_wrong_password_from_smtplib_is_one_failure(
    start_gateway: Start, certificate: Certificate, platform: FakePlatform
) -> None:
    """Issue 31: smtplib tries PLAIN, then LOGIN, with the same pair; that was two failures."""
    gw = await start_gateway(secured(certificate, allow_without_tls=True, max_failures=2))

    def wrong_then_right() -> tuple[int, bytes]:
        with gw.client() as client:
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                client.login("crm", "wrong")
            assert refused.value.smtp_code == 535
        with gw.client() as client:  # not blocked: that was one guess
            reply: tuple[int, bytes] = client.login("crm", PASSWORD)
            return reply

    assert (await asyncio.to_thread(wrong_then_right))[0] == 235
    # Two different wrong passwords are two guesses: blocked.
    replies = await gw.dialog(
        plain_auth("crm", "wrong"), plain_auth("crm", "wrong"), plain_auth("crm", "other")
    )
    assert [code for code, _ in replies] == [535, 535, 421]
