"""Config validation: every problem at once, each naming its key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config.loader import load_config, parse_config
from gateway.config.model import Secret
from gateway.config.units import parse_duration, parse_hostport, parse_size
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {"api": {"token": "t"}, "domains": {"sms.local": {"type": "sms"}}}


def problems(data: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as error:
        parse_config(data, env=env or {})
    return error.value.problems


def test_minimal_config_has_the_documented_defaults() -> None:
    config = parse_config(MINIMAL, env={})
    assert [str(listener) for listener in config.smtp.listen] == ["127.0.0.1:2525"]
    assert config.smtp.max_message_size == 1024 * 1024
    assert config.smtp.max_recipients == 100
    assert config.api.send_url == "https://1-pulse.kupon.mobi/api/v1/bulk/send-message"
    assert config.api.timeout == 10
    assert config.spool.retry == (30.0, 120.0, 600.0, 1800.0, 3600.0)
    assert config.spool.give_up_after == 2 * 86400
    assert config.domains["sms.local"].recipient == "phone"


def test_wrong_message_type_names_its_key_path() -> None:
    data = {**MINIMAL, "domains": {"sms.local": {"type": "smss"}}}
    assert problems(data) == [
        "domains[sms.local].type: 'smss' is not one of sms, push, viber, whatsapp, telegram, "
        "vk, ok, email, hlr, voice, mms, bot, bulk"
    ]


def test_a_domain_with_a_bad_or_missing_type_has_its_other_keys_checked_not_judged() -> None:
    # The other keys are checked, but not by a type the domain does not have: an e-mail alias
    # under a mistyped `type: emial` is not reported as "not a phone number".
    data = {
        **MINIMAL,
        "domains": {
            "mail.local": {"type": "emial", "aliases": {"boss": "boss@corp.test"}, "ttl": "long"},
            "sms.local": {"sender": "x", "ttl": "soon", "max_parts": 2},
        },
    }
    found = problems(data)
    assert sorted(line.split(":")[0] for line in found) == [
        "domains[mail.local].ttl",
        "domains[mail.local].type",
        "domains[sms.local].ttl",
        "domains[sms.local].type",
    ], found


def test_every_problem_is_reported_at_once() -> None:
    data = {
        "smtp": {"listen": "nowhere", "max_message_size": "lots", "colour": "red"},
        "api": {"token": "t", "timeout": "soon"},
        "spool": {"retry": ["30s", "often"]},
        "domains": {
            "sms.local": {"type": "sms", "ttl": "long", "text": "{subjet}"},
            "mail.local": {"sender": "x"},
        },
        "extra": 1,
    }
    found = problems(data)
    assert len(found) == 9, found
    for prefix in (
        "smtp.listen: ",
        "smtp.max_message_size: ",
        "smtp.colour: unknown key",
        "api.timeout: ",
        "spool.retry: ",
        "domains[sms.local].ttl: ",
        "domains[sms.local].text: unknown placeholder {subjet}",
        "domains[mail.local].type: is required",
        "extra: unknown key",
    ):
        assert any(line.startswith(prefix) for line in found), (prefix, found)


def test_environment_variables_are_substituted() -> None:
    data = {
        "api": {"token": "${PULSE_TOKEN}", "base_url": "${BASE:-http://127.0.0.1:9/x}"},
        "domains": {"sms.local": {"type": "sms", "sender": "Shop-${SUFFIX:-}"}},
    }
    config = parse_config(data, env={"PULSE_TOKEN": "abc"})
    assert config.api.token.reveal() == "abc"
    assert config.api.base_url == "http://127.0.0.1:9/x"
    assert config.domains["sms.local"].fields["sender"] == "Shop-"


def test_unset_environment_variable_is_an_error_at_its_key() -> None:
    data = {"api": {"token": "${PULSE_TOKEN}"}, "domains": {"sms.local": {"type": "sms"}}}
    found = problems(data)
    assert found[0].startswith("api.token: environment variable PULSE_TOKEN is not set")


def test_token_is_required_unless_dry_run() -> None:
    data = {"domains": {"sms.local": {"type": "sms"}}}
    assert problems(data)[0].startswith("api.token: is required")
    assert parse_config(data, env={}, dry_run=True).api.dry_run is True


def test_secret_never_shows_itself() -> None:
    config = parse_config({**MINIMAL, "api": {"token": "very-secret-token"}}, env={})
    assert "very-secret-token" not in repr(config)
    assert "very-secret-token" not in str(config.api.token)
    assert Secret("x") == Secret("x")


def test_domain_fields_are_the_platform_fields_set() -> None:
    data = {
        **MINIMAL,
        "domains": {
            "v.local": {
                "type": "viber",
                "sender": "Shop",
                "ttl": 60,
                "charset": "CP1251",
                "button": "Open",
                "action": "https://shop.example/o",
                "image": "https://shop.example/i.png",
                "find_token": True,
                "kannel_status": False,
            }
        },
    }
    domain = parse_config(data, env={}).domains["v.local"]
    assert dict(domain.fields) == {
        "sender": "Shop",
        "ttl": "60",
        "charset": "CP1251",
        "button": "Open",
        "action": "https://shop.example/o",
        "image": "https://shop.example/i.png",
        "find_token": "1",
    }


def test_bad_rewrite_and_override_lists_are_refused() -> None:
    data = {
        **MINIMAL,
        "domains": {
            "sms.local": {
                "type": "sms",
                "rewrite": [{"match": "(", "replace": "7"}],
                "allow_headers": ["sender", "colour"],
            }
        },
    }
    found = problems(data)
    assert any(p.startswith("domains[sms.local].rewrite: [0].match: not a regular") for p in found)
    assert any(p.startswith("domains[sms.local].allow_headers: 'colour'") for p in found)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), ("250ms", 0.25), (45, 45)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("512KiB", 524288), ("10MiB", 10485760), ("1MB", 1000000), (2048, 2048)]
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("127.0.0.1:2525", ("127.0.0.1", 2525)),
        ("[::1]:25", ("::1", 25)),
        (":25", ("127.0.0.1", 25)),
    ],
)
def test_listen_addresses(text: str, pair: tuple[str, int]) -> None:
    assert parse_hostport(text) == pair


def test_example_config_is_valid_and_documents_every_key() -> None:
    example = ROOT / "config" / "example.yaml"
    config = load_config(example, env={"PULSE_TOKEN": "x"})
    assert config.domains
    text = example.read_text()
    for key in (
        "listen:",
        "hostname:",
        "max_message_size:",
        "max_recipients:",
        "allow_networks:",
        "timeout:",
        "fallback_charset:",
        "base_url:",
        "token:",
        "dry_run:",
        "max_concurrency:",
        "path:",
        "retry:",
        "give_up_after:",
        "shutdown_timeout:",
        "level:",
        "type:",
        "recipient:",
        "text:",
        "html:",
        "max_length:",
        "strip_signature:",
        "rewrite:",
        "allow_headers:",
        "sender:",
        "ttl:",
        "charset:",
        "button:",
        "action:",
        "image:",
        "find_token:",
        "kannel_status:",
        "public_url:",
        "callback_secret:",
        "enabled:",
        "relay:",
        "from:",
        "format:",
        "max_rate:",
    ):
        assert key in text, key


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("api: {token: t}\ndomains:\n  sms.local: {type: sms}\n")
    assert main(["check-config", "-c", str(good)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "domain sms.local: type sms" in out

    bad = tmp_path / "bad.yaml"
    bad.write_text("api: {token: t}\ndomains:\n  sms.local: {type: smss}\nsmtp: {port: 25}\n")
    assert main(["check-config", "-c", str(bad)]) == 78
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("smtp.port: unknown key")
    assert err[1].startswith("domains[sms.local].type: 'smss' is not one of sms, push")

    broken = tmp_path / "broken.yaml"
    broken.write_text("domains: [unclosed\n")
    assert main(["check-config", "-c", str(broken)]) == 78
    assert "not valid YAML (line" in capsys.readouterr().err
    assert main(["check-config", "-c", str(tmp_path / "missing.yaml")]) == 78


def test_check_config_summarises_listener_policies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.smtp.passwords import hash_password

    path = tmp_path / "auth.yaml"
    path.write_text(
        "api: {token: t}\n"
        "smtp:\n"
        "  listen: [127.0.0.1:2525, {address: '127.0.0.1:2526', require_auth: false}]\n"
        "  auth:\n"
        "    allow_without_tls: true\n"
        f"    users: {{crm: {{password_hash: '{hash_password('pw')}'}}}}\n"
        "domains:\n  sms.local: {type: sms}\n"
    )
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "    127.0.0.1:2525: plain, AUTH required\n" in out
    assert "    127.0.0.1:2526: plain, AUTH optional\n" in out
    assert "  SMTP AUTH users: crm\n" in out


def test_a_postgresql_spool_url_is_checked_and_its_password_never_shown() -> None:
    url = "postgresql://gw:hunter2-secret@db.example.com/smtp2pulse"
    config = parse_config({**MINIMAL, "spool": {"url": url}}, env={})
    assert config.spool.url is not None and config.spool.url.reveal() == url
    assert "hunter2" not in repr(config)
    assert problems({**MINIMAL, "spool": {"url": "mysql://gw:hunter2@db/x"}}) == [
        "spool.url: must be a postgresql:// URL (got mysql scheme)"
    ]
    assert problems({**MINIMAL, "spool": {"url": url, "path": "/tmp/s.sqlite3"}}) == [
        "spool.url: give spool.path (one SQLite file) or spool.url (PostgreSQL), not both"
    ]


@pytest.mark.parametrize(
    "url",
    [
        "https://1-pulse.kupon.mobi/api/v1/bulk/send-message",
        "https://1-pulse.kupon.mobi/api/v1/bulk/send-list-messages/",
    ],
)
def test_a_base_url_with_the_method_in_it_is_refused_with_the_base_to_give(url: str) -> None:
    [problem] = problems({**MINIMAL, "api": {"token": "t", "base_url": url}})
    method = url.rstrip("/").rpartition("/")[2]
    assert problem == (
        f"api.base_url: {url!r} ends in the method /{method}, which the gateway "
        "appends; give the API's base, e.g. "
        "'https://1-pulse.kupon.mobi/api/v1/bulk'"
    )


@pytest.mark.parametrize(
    ("stored", "said"),
    [
        (None, "is required: the output of `smtp2pulse hash-password` (scrypt$...)"),
        (
            "hunter2-the-password",
            "is not a password hash (a password written here is never taken): give the output of",
        ),
        (
            "scrypt$16384$8$1$c2FsdA==",
            "is a damaged scrypt hash: 6 fields separated by $ are "
            "expected, found 5 (copied only in part?)",
        ),
        ("scrypt$1000$8$1$c2FsdA==$aGFzaA==", "is a damaged scrypt hash: its cost fields are not"),
        (
            "scrypt$16384$8$1$c2FsdA==$",
            "is a damaged scrypt hash: its salt or digest is not base64",
        ),
    ],
)
def test_a_malformed_password_hash_is_named_for_what_it_is_and_nothing_follows(
    stored: str | None, said: str
) -> None:
    user: dict[str, object] = {"domains": ["sms.local"], "senders": ["Shop"]}
    if stored is not None:
        user["password_hash"] = stored
    found = problems(
        {
            **MINIMAL,
            "smtp": {
                "listen": [{"address": "127.0.0.1:2525", "require_auth": True}],
                "auth": {"users": {"crm": user}, "allow_without_tls": True},
            },
        }
    )
    # One line: no "no user is configured" for a user that is there, its hash mistyped.
    assert len(found) == 1 and found[0].startswith(f"smtp.auth.users.crm.password_hash: {said}")
    assert "hunter2" not in found[0]  # a password pasted by mistake is never repeated
