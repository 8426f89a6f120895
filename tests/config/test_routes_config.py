"""`routes` checked once at load: every mistake named by its key path (issue 33)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.loader import parse_config
from gateway.config.model import Recipient
from gateway.errors import ConfigError

DOMAINS = {
    "sms.local": {"type": "sms", "aliases": {"duty": ["79001234567", "79007654321"]}},
    "mail.local": {"type": "email"},
}


def load(routes: Any) -> Any:
    return parse_config({"api": {"token": "t"}, "domains": DOMAINS, "routes": routes}, env={})


def problems(routes: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(routes)
    return caught.value.problems


def test_a_pattern_re2_cannot_compile_is_named_by_its_key_path() -> None:
    lines = problems(
        [
            {"name": "a", "match": {"subject": "x"}, "drop": True},
            {"name": "b", "match": {"body": "y"}, "drop": True},
            {
                "name": "c",
                "match": {"subject": "(?<=re)boot", "headers": {"X-Level": "(a"}},
                "drop": True,
            },
        ]
    )
    assert lines == [
        "routes[2].match.headers.X-Level: '(a' is not a regular expression RE2 takes: "
        "missing ): (a",
        "routes[2].match.subject: '(?<=re)boot' is not a regular expression RE2 takes: "
        "invalid perl operator: (?<=",
    ]


def test_unknown_keys_and_missing_parts_are_errors() -> None:
    lines = problems(
        [
            {"name": "a", "match": {"subjekt": "x"}, "drop": True, "later": 1},
            {"match": {"subject": "x"}, "set": {"sender": "S", "priority": 1}},
            {"name": "c", "match": {"subject": "x"}},
            {"name": "d", "drop": True},
        ]
    )
    assert "routes[0].later: unknown key (known: drop, match, name, set, to)" in lines
    assert "routes[0].match.subjekt: unknown key (known: body, from, headers, subject, to)" in lines
    assert "routes[1].name: is required (it names the route in logs and /metrics)" in lines
    assert (
        "routes[1].set.priority: unknown key (known: quiet_hours, sender, text, ttl, type)" in lines
    )
    assert "routes[2]: needs what it does: to (recipients), set (fields) or drop: true" in lines
    assert any(line.startswith("routes[3].match: is required") for line in lines)


def test_names_are_unique_and_targets_are_served_and_checked() -> None:
    lines = problems(
        [
            {"name": "same", "match": {"subject": "x"}, "drop": True},
            {"name": "same", "match": {"subject": "y"}, "drop": True},
            {
                "name": "t",
                "match": {"subject": "z"},
                "to": ["duty@sms.local", "x@corp.local", "12@sms.local"],
            },
            {"name": "u", "match": {"to": "alerts@corp.local"}, "set": {"sender": "S"}},
            {
                "name": "v",
                "match": {"subject": "v"},
                "to": ["duty@sms.local"],
                "set": {"type": "email"},
            },
            {"name": "w", "match": {"subject": "w"}, "drop": True, "to": ["duty@sms.local"]},
        ]
    )
    assert "routes[1].name: 'same' is the name of an earlier route" in lines
    assert any(
        line.startswith("routes[2].to[1]: <x@corp.local>: relay access denied") for line in lines
    )
    assert any(line.startswith("routes[2].to[2]: '12' is not a phone number") for line in lines)
    assert (
        "routes[3].match.to: corp.local is not a served domain: this route needs to "
        "(where such mail goes) or drop: true"
    ) in lines
    assert "routes[4].set.type: 'email' does not fit duty@sms.local (a phone recipient)" in lines
    assert any(line.startswith("routes[5].drop:") for line in lines)


def test_a_valid_route_is_resolved_at_load() -> None:
    config = load(
        [
            {
                "name": "ups",
                "match": {
                    "from": "*@UPS.corp.local",
                    "to": "alerts@corp.local",
                    "headers": {"X-Severity": "High"},
                },
                "to": "duty@sms.local",
                "set": {"ttl": 5, "quiet_hours": False},
            }
        ]
    )
    [route] = config.routes
    assert route.to == ("duty@sms.local",)
    assert route.recipients == (
        Recipient("duty@sms.local", "sms.local", "79001234567"),
        Recipient("duty@sms.local", "sms.local", "79007654321"),
    )
    assert route.domains["sms.local"].fields["ttl"] == "5"
    assert route.domains["sms.local"].quiet_hours is None
    assert route.match.senders.search("ups7@ups.corp.local")  # globs ignore case
    assert not route.match.senders.search("ups7@ups.corp.local.evil.test")
    assert route.match.headers[0][0] == "x-severity"
    assert route.action == "to duty@sms.local; set quiet_hours=false, ttl=5"
