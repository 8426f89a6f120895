"""The operator's documentation cannot drift from the program.

docs/configuration.md has a table row for every key: the test asks the loader itself which keys
each section accepts (an unknown key's error lists them), reads config/example.yaml, and checks
that the three agree. Each default written as one `literal` is set in a config and must load to
exactly what leaving the key out gives. The README's service config loads, and its quick start's
`sed` makes a config that sends to a local fake platform.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.loader import load_config, parse_config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "configuration.md"
EXAMPLE = ROOT / "config" / "example.yaml"
README = ROOT / "README.md"
PROBE = "zz_not_a_key"
DOMAIN = "d.local"
ENV = {"CREDENTIALS_DIRECTORY": "/nonexistent"}


def documented() -> dict[str, str]:
    """key -> its default cell, from every `| key | default | meaning |` table."""
    rows: dict[str, str] = {}
    in_table = False
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| key | default |"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        if in_table and not set(cells[0]) <= {"-", " "}:
            key = cells[0].strip("`")
            assert key not in rows, f"{key} is documented twice"
            rows[key] = cells[1]
    return rows


def base() -> dict[str, Any]:
    return {
        "api": {"token": "t"},
        "http": {"listen": "127.0.0.1:8025"},
        "smtp": {"auth": {"max_failures": 3}},
        "domains": {DOMAIN: {"type": "sms"}},
    }


def known_keys(path: list[str], config: dict[str, Any]) -> set[str]:
    """The keys the loader accepts at `path`, from the message it gives for an unknown one."""
    node = config
    for part in path:
        node = node.setdefault(part, {})
    node[PROBE] = 1
    with pytest.raises(ConfigError) as caught:
        parse_config(config, env=ENV)
    for line in caught.value.problems:
        known = re.search(r"known: ([^)]*)\)", line)
        if PROBE in line and known is not None:
            return set(known.group(1).split(", "))
    raise AssertionError(f"no list of known keys for {path}: {caught.value}")


def loader_keys() -> set[str]:
    keys: set[str] = set()

    def add(prefix: str, names: set[str]) -> None:
        keys.update(f"{prefix}.{name}" if prefix else name for name in names)

    add("", known_keys([], base()))
    for section in ("smtp", "api", "spool", "http", "bounces", "log"):
        add(section, known_keys([section], base()))
    add("smtp.auth", known_keys(["smtp", "auth"], base()))
    add("smtp.tls", known_keys(["smtp", "tls"], base()))
    with_user = base()
    add("smtp.auth.users.NAME", known_keys(["smtp", "auth", "users", "u"], with_user))
    add("domains.NAME", known_keys(["domains", DOMAIN], base()))
    add("domains.NAME.limits", known_keys(["domains", DOMAIN, "limits"], base()))
    # A listener given as a mapping: its unknown-key message comes from the listener parser.
    listener = base()
    listener["smtp"]["listen"] = [{"address": "127.0.0.1:2525", PROBE: 1}]
    with pytest.raises(ConfigError) as caught:
        parse_config(listener, env=ENV)
    found = re.search(r"known: ([^)]*)\)", str(caught.value))
    assert found, caught.value
    add("smtp.listen[]", set(found.group(1).split(", ")))
    # A rewrite rule has exactly match and replace (its message says so, not as a list).
    add("domains.NAME.rewrite[]", {"match", "replace"})
    route = {"name": "r", "match": {"subject": "x"}, "set": {"sender": "s"}}
    add("routes[]", _route_keys(route, []))
    add("routes[].match", _route_keys(route, ["match"]))
    add("routes[].set", _route_keys(route, ["set"]))
    return keys


def _route_keys(route: dict[str, Any], path: list[str]) -> set[str]:
    """The keys the loader accepts in a route (`routes` is a list, which known_keys cannot walk)."""
    config = base()
    config["routes"] = [copy.deepcopy(route)]
    node = config["routes"][0]
    for part in path:
        node = node[part]
    node[PROBE] = 1
    with pytest.raises(ConfigError) as caught:
        parse_config(config, env=ENV)
    found = re.search(r"known: ([^)]*)\)", str(caught.value))
    assert found, caught.value
    return set(found.group(1).split(", "))


# Mappings whose keys are names the operator chooses, not config keys.
NAMED = {
    "domains": "NAME",
    "smtp.auth.users": "NAME",
    "domains.NAME.aliases": None,
    "routes[].match.headers": None,
}


def example_keys() -> tuple[set[str], str]:
    """Keys set in config/example.yaml (chosen names as NAME), and its text for commented ones."""
    text = EXAMPLE.read_text(encoding="utf-8")
    keys: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, f"{prefix}[]")
            return
        if not isinstance(node, dict):
            return
        if prefix in NAMED:
            name = NAMED[prefix]
            if name is not None:
                for value in node.values():
                    walk(value, f"{prefix}.{name}")
            return
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            keys.add(path)
            walk(value, path)

    walk(yaml.safe_load(text), "")
    return keys, text


def test_every_key_the_loader_accepts_is_documented_and_nothing_else() -> None:
    docs, loader = set(documented()), loader_keys()
    # Section rows (`smtp`, `smtp.tls`, …) are documented as keys too.
    assert sorted(loader - docs) == [], "keys the loader accepts that docs/configuration.md lacks"
    sections = {key for key in docs if any(other.startswith(key + ".") for other in docs)}
    assert sorted(docs - loader - sections - {"domains"}) == [], (
        "keys docs/configuration.md has that the loader refuses"
    )


def test_every_key_of_the_example_is_documented_and_every_documented_key_in_the_example() -> None:
    docs = set(documented())
    keys, text = example_keys()
    assert sorted(keys - docs) == [], "config/example.yaml keys missing from the docs"
    # The example shows every key, set or in a comment (`# key:`), the placeholders aside.
    missing = [
        key
        for key in docs
        if key not in keys
        and not re.search(rf"#.*\b{re.escape(key.rsplit('.', 1)[-1].removesuffix('[]'))}:", text)
    ]
    assert missing == [], "documented keys config/example.yaml does not show"


def _set(config: dict[str, Any], key: str, value: Any) -> None:
    parts = key.replace("domains.NAME", f"domains.{DOMAIN}").split(".")
    if parts[0] == "domains":
        parts = ["domains", DOMAIN, *parts[3:]]
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def literal_defaults() -> list[tuple[str, str]]:
    rows = []
    for key, default in documented().items():
        found = re.fullmatch(r"`([^`]*)`", default)
        if found and "[]" not in key and ".users." not in key and not key.startswith("smtp.tls"):
            rows.append((key, found.group(1)))
    return rows


# Keys that mean something only beside another: set in both configs compared.
NEEDS = {"domains.NAME.quiet_hours_urgent": ("domains.NAME.quiet_hours", "22:00-08:00")}


@pytest.mark.parametrize(("key", "default"), literal_defaults())
def test_a_documented_default_is_what_the_loader_uses(key: str, default: str) -> None:
    without, config = base(), base()
    if key in NEEDS:
        _set(without, *NEEDS[key])
        _set(config, *NEEDS[key])
    _set(config, key, yaml.safe_load(default))
    assert parse_config(config, env=ENV) == parse_config(without, env=ENV), f"{key}: {default}"


def _readme_block(marker: str) -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"<!-- ci:{marker} -->\s*```sh\n(.*?)```", text, re.S)
    assert found, marker
    return found.group(1)


def test_the_readme_service_config_loads(tmp_path: Path) -> None:
    block = _readme_block("service-install")
    config = re.search(r"<<'EOF'\n(.*?)\nEOF", block, re.S)
    assert config
    (tmp_path / "pulse-token").write_text("not-live-yet")
    path = tmp_path / "config.yaml"
    path.write_text(config.group(1) + "\n")
    loaded = load_config(path, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert loaded.api.dry_run
    assert str(loaded.spool.path) == "/var/lib/smtp2pulse/spool.sqlite3"
    # Going live is the README's sed: dry_run becomes false and nothing else changes.
    go_live = _readme_block("go-live")
    sed = next(line for line in go_live.splitlines() if " sed " in line)
    script = shlex.split(sed)[shlex.split(sed).index("-i") + 1]
    subprocess.run(["sed", "-i", script, str(path)], check=True)
    live = load_config(path, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert not live.api.dry_run
    assert live.domains == loaded.domains and live.smtp == loaded.smtp


def test_the_readme_try_config_sends_to_the_local_fake_platform(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("sed ") and "config/example.yaml > try.yaml" in line
    )
    subprocess.run(
        line.replace("try.yaml", str(tmp_path / "try.yaml")), shell=True, check=True, cwd=ROOT
    )
    config = load_config(tmp_path / "try.yaml", env={"PULSE_TOKEN": "try-token"})
    assert not config.api.dry_run
    assert config.api.send_url == "http://127.0.0.1:8099/api/v1/bulk/send-message"


def test_ci_runs_the_readme_test_command() -> None:
    text = README.read_text(encoding="utf-8")
    command = next(
        line for line in text.splitlines() if line.startswith("python3 -m venv .venv-test")
    )
    assert command in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
