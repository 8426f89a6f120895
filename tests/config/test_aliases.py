"""Aliases and groups: checked at load with their key paths, fanned out at RCPT over real SMTP."""

from __future__ import annotations

import smtplib
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import yaml

from gateway.app import Gateway
from gateway.config.aliases import MAX_EXPANDED
from gateway.config.loader import load_config, parse_config
from gateway.errors import ConfigError
from gateway.spool.rows import Search
from tests.conftest import Running, base_config, merge, text_message
from tests.fakeplatform import FakePlatform

Start = Callable[..., Awaitable[Running]]
ALIASES = {
    "domains": {
        "sms.local": {
            "aliases": {"duty": ["79001234567", "+7-900-765-43-21"], "Ivan.Petrov": "79001112233"}
        }
    }
}


def problems(aliases: object, recipient: str = "phone") -> list[str]:
    data = {
        "api": {"token": "t"},
        "domains": {"sms.local": {"type": "sms", "recipient": recipient, "aliases": aliases}},
    }
    with pytest.raises(ConfigError) as error:
        parse_config(data, env={})
    return error.value.problems


def test_each_target_is_checked_like_a_recipient_and_named_by_its_key_path() -> None:
    assert problems({"duty": ["79001234567", "12345", "7900(123)4567"]}) == [
        "domains[sms.local].aliases.duty[1]: '12345' is not a phone number in international "
        "format (10 to 15 digits)",
        "domains[sms.local].aliases.duty[2]: '7900(123)4567' is not a phone number (digits, "
        "optional leading +, separators - and . only)",
    ]
    assert problems({"boss": "ivan@example.com"}, recipient="email") == [
        "domains[sms.local].aliases.boss: 'ivan@example.com' is not user=example.com"
    ]


def test_alias_names_are_local_parts_unique_without_regard_to_case() -> None:
    assert problems({"Duty": "79001234567", "duty": "79007654321"}) == [
        "domains[sms.local].aliases.duty: listed twice (names are matched without regard to case)"
    ]
    assert problems({"on call": "79001234567"}) == [
        "domains[sms.local].aliases.on call: 'on call' is not a local part "
        "(letters, digits, . - _ +)"
    ]
    assert problems({"duty": []}) == [
        "domains[sms.local].aliases.duty: must be a recipient or a non-empty list of recipients"
    ]
    assert problems(["duty"]) == [
        "domains[sms.local].aliases: must be a mapping of name to a recipient or a list of "
        'them (duty: ["79001234567", "79007654321"])'
    ]


async def test_an_alias_of_a_group_is_one_delivery_per_member(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway(ALIASES)
    queue_id = await gw.submit(text_message("Disk full", "db1"), "DUTY@sms.local")
    assert await gw.wait_final(queue_id) == ["sent", "sent"]
    assert sorted(r.form["sent_to"] for r in platform.requests) == ["79001234567", "79007654321"]
    assert {r.form["sent_text"] for r in platform.requests} == {"Disk full\ndb1"}
    detail = await gw.gateway.spool.show_message(queue_id)
    assert detail is not None
    assert [d.recipient for d in detail.deliveries] == ["DUTY@sms.local"] * 2


async def test_a_number_reached_twice_gets_one_message(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway(ALIASES)
    queue_id = await gw.submit(
        text_message("x"), ["duty@sms.local", "79001234567@sms.local", "ivan.petrov@sms.local"]
    )
    assert await gw.wait_final(queue_id) == ["sent"] * 3
    assert sorted(r.form["sent_to"] for r in platform.requests) == [
        "79001112233",
        "79001234567",
        "79007654321",
    ]


async def test_a_group_counts_as_its_members_against_max_recipients(
    start_gateway: Start, platform: FakePlatform
) -> None:
    # max_recipients is 5 in the tests' base config: 2 + 2 fit, a third group of 2 does not.
    gw = await start_gateway(ALIASES)
    replies = await gw.dialog(
        "MAIL FROM:<app@corp.test>",
        "RCPT TO:<duty@sms.local>",
        "RCPT TO:<Duty@sms.local>",
        "RCPT TO:<duty@sms.local>",
        "RCPT TO:<79009998877@sms.local>",
        "RCPT TO:<79009998866@sms.local>",
    )
    assert [code for code, _ in replies] == [250, 250, 250, 452, 250, 452]
    assert replies[3][1].startswith(b"4.5.3 ")


async def test_a_local_part_neither_alias_nor_number_is_553_and_nothing_is_stored(
    start_gateway: Start, platform: FakePlatform
) -> None:
    gw = await start_gateway(ALIASES)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await gw.send(text_message("x"), "nobody@sms.local")
    code, text = refused.value.recipients["nobody@sms.local"]
    assert code == 553 and text.startswith(b"5.1.3 ")
    assert b"not an alias of sms.local" in text
    assert await gw.gateway.spool.find_deliveries(Search()) == []
    assert platform.requests == []


async def test_sighup_reload_brings_new_aliases(tmp_path: Path, platform: FakePlatform) -> None:
    path = tmp_path / "config.yaml"
    data = merge(base_config(tmp_path / "spool.sqlite3", platform.base_url), ALIASES)
    path.write_text(yaml.safe_dump(data))
    gateway = Gateway(load_config(path))
    await gateway.start()
    try:
        gw = Running(gateway)
        path.write_text(
            yaml.safe_dump(
                merge(data, {"domains": {"sms.local": {"aliases": {"duty": "79005550000"}}}})
            )
        )
        assert await gateway.reload(path) is True
        await gw.send(text_message("after"), "duty@sms.local")
        [request] = await platform.wait_for(1)
        assert request.form["sent_to"] == "79005550000"
    finally:
        await gateway.stop()


def file_config(tmp_path: Path, name: str, content: str, **more: object) -> object:
    listed = tmp_path / name
    listed.write_text(content)
    return {
        "api": {"token": "t"},
        "domains": {"sms.local": {"type": "sms", "aliases_file": str(listed), **more}},
    }


def test_an_aliases_file_in_csv_or_yaml(tmp_path: Path) -> None:
    config = parse_config(
        file_config(
            tmp_path,
            "phones.csv",
            "# name,recipient\nduty,79001234567\n\nIvan,+7-900-111-22-33\nDUTY,79007654321\n",
            aliases={"boss": "79005550000"},
        ),
        env={},
    )
    assert config.domains["sms.local"].aliases == {
        "boss": ("79005550000",),
        "duty": ("79001234567", "79007654321"),
        "ivan": ("79001112233",),
    }
    config = parse_config(file_config(tmp_path, "phones.yaml", "duty: [79001234567]\n"), env={})
    assert config.domains["sms.local"].aliases == {"duty": ("79001234567",)}


def test_aliases_file_problems_name_the_file_and_line(tmp_path: Path) -> None:
    where = "domains[sms.local].aliases_file"
    data = file_config(
        tmp_path,
        "phones.csv",
        "duty,79001234567\nduty\nboss,123\n",
        aliases={"duty": "79005550000"},
    )
    with pytest.raises(ConfigError) as error:
        parse_config(data, env={})
    assert error.value.problems == [
        f"{where}: {tmp_path / 'phones.csv'} line 2: not name,recipient",
        f"{where}.boss: '123' is not a phone number in international format (10 to 15 digits)",
        f"{where}.duty: also in aliases",
    ]
    missing = {
        "api": {"token": "t"},
        "domains": {"sms.local": {"type": "sms", "aliases_file": str(tmp_path / "none.csv")}},
    }
    with pytest.raises(ConfigError) as error:
        parse_config(missing, env={})
    assert error.value.problems == [
        f"{where}: cannot read {tmp_path / 'none.csv'}: No such file or directory"
    ]


async def test_an_edited_aliases_file_is_read_again_on_sighup(
    tmp_path: Path, platform: FakePlatform
) -> None:
    path, phones = tmp_path / "config.yaml", tmp_path / "phones.csv"
    phones.write_text("duty,79001234567\n")
    data = merge(
        base_config(tmp_path / "spool.sqlite3", platform.base_url),
        {"domains": {"sms.local": {"aliases_file": str(phones)}}},
    )
    path.write_text(yaml.safe_dump(data))
    gateway = Gateway(load_config(path))
    await gateway.start()
    try:
        gw = Running(gateway)
        await gw.send(text_message("before"), "duty@sms.local")
        phones.write_text("duty,79007654321\nduty,79005550000\n")
        assert await gateway.reload(path) is True
        await gw.send(text_message("after"), "duty@sms.local")
        received = await platform.wait_for(3)
        assert sorted((r.form["sent_text"], r.form["sent_to"]) for r in received) == [
            ("after\nWorld", "79005550000"),
            ("after\nWorld", "79007654321"),
            ("before\nWorld", "79001234567"),
        ]
    finally:
        await gateway.stop()


def anchor_bomb(names: int, group: int) -> str:
    """A small YAML file naming `names` aliases of one `group`-number list, through an anchor."""
    numbers = ", ".join(str(79000000000 + n) for n in range(group))
    lines = [f"first: &group [{numbers}]"] + [f"n{n}: *group" for n in range(names)]
    return "\n".join(lines) + "\n"


def test_an_aliases_file_over_the_bound_is_refused_naming_its_key(tmp_path: Path) -> None:
    where = "domains[sms.local].aliases_file"
    # The file: ~90 KB, 3,000 names of one 1,000-number group (44.6 s to check).
    bomb = file_config(tmp_path, "bomb.yaml", anchor_bomb(3000, 1000))
    started = time.monotonic()
    with pytest.raises(ConfigError) as error:
        parse_config(bomb, env={})
    # Refused before a recipient is checked: checking them all took 44.6 s; a generous bound,
    # since the machine running the tests may be busy.
    assert time.monotonic() - started < 10
    assert error.value.problems == [
        f"{where}: more than {MAX_EXPANDED} recipients in all (3001 names; each name's "
        f"recipients summed): split the list or shorten it"
    ]
    rows = "".join(f"n{n},{79000000000 + n}\n" for n in range(MAX_EXPANDED + 1))
    with pytest.raises(ConfigError) as error:
        parse_config(file_config(tmp_path, "big.csv", rows), env={})
    assert error.value.problems == [
        f"{where}: more than {MAX_EXPANDED} recipients in all ({tmp_path / 'big.csv'}; each "
        f"name's recipients summed): split the list or shorten it"
    ]
    # At the bound it loads.
    config = parse_config(file_config(tmp_path, "ok.yaml", anchor_bomb(99, 1000)), env={})
    assert len(config.domains["sms.local"].aliases) == 100


def test_a_file_of_bad_rows_is_named_by_its_first_problems(tmp_path: Path) -> None:
    rows = "".join(f"n{n},12345\n" for n in range(5000))
    with pytest.raises(ConfigError) as error:
        parse_config(file_config(tmp_path, "bad.csv", rows), env={})
    assert len(error.value.problems) == 21
    assert error.value.problems[-1] == (
        "domains[sms.local].aliases_file: more problems not listed (the first 20 above)"
    )


def test_deeply_nested_yaml_in_an_aliases_file_is_a_config_error(tmp_path: Path) -> None:
    deep = file_config(tmp_path, "deep.yaml", "duty: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError) as error:
        parse_config(deep, env={})
    assert error.value.problems == [
        f"domains[sms.local].aliases_file: {tmp_path / 'deep.yaml'} is nested too deeply to be "
        f"a list of aliases"
    ]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(deep))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", str(config)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 78, result.stderr
    assert b"nested too deeply" in result.stderr and b"Traceback" not in result.stderr


def test_an_alias_named_like_a_recipient_is_refused() -> None:
    assert problems(
        {
            "79001234567": "79007654321",
            "+7-900-111-22-33": "79007654321",
            "8-900-111-22-33": "79007654321",
        }
    ) == [
        "domains[sms.local].aliases.79001234567: '79001234567' is itself a recipient of this "
        "domain (79001234567); an alias must not reroute it",
        "domains[sms.local].aliases.+7-900-111-22-33: '+7-900-111-22-33' is itself a recipient "
        "of this domain (79001112233); an alias must not reroute it",
        "domains[sms.local].aliases.8-900-111-22-33: '8-900-111-22-33' is itself a recipient "
        "of this domain (89001112233); an alias must not reroute it",
    ]
    assert problems({"boss=example.com": "ivan=example.com"}, recipient="email") == [
        "domains[sms.local].aliases.boss=example.com: 'boss=example.com' is itself a recipient "
        "of this domain (boss@example.com); an alias must not reroute it"
    ]


def test_an_anchor_bomb_in_the_config_itself_is_refused_at_once(tmp_path: Path) -> None:
    # Nine levels of ten: 10^9 numbers if every use of an anchor were walked (hours).
    lines = ["api: {token: t}", "x0: &x0 [79001234567, 79001234568]"]
    lines += [f"x{n}: &x{n} [{', '.join([f'*x{n - 1}'] * 10)}]" for n in range(1, 10)]
    lines.append("domains: {sms.local: {type: sms, aliases: {duty: *x9}}}")
    config = tmp_path / "config.yaml"
    config.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as error:  # walking every use would take hours
        load_config(config)
    assert "domains[sms.local].aliases.duty[0]: must be a recipient (a string)" in (
        error.value.problems
    )


def test_a_deeply_nested_config_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("api: {token: t}\ndomains: " + "[" * 5000 + "]" * 5000 + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", str(config)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 78, result.stderr
    assert b"nested too deeply" in result.stderr and b"Traceback" not in result.stderr
