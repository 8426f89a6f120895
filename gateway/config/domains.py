"""The recipient domains a gateway serves: what each one sends, and how its config is read.

A domain decides the message type, how a local part becomes `sent_to`, how the text is built,
and which platform fields every request for it carries.
"""

from __future__ import annotations

import dataclasses
import re
import string
from typing import Any

from gateway.config import validation as v
from gateway.config.aliases import domain_aliases
from gateway.config.images import read_images
from gateway.config.limits import check_notify, parse_limits
from gateway.config.model import DomainConfig, PhoneRewrite
from gateway.config.quiet import URGENT_CHOICES, QuietHours, window, zone

MESSAGE_TYPES = (
    "sms",
    "push",
    "viber",
    "whatsapp",
    "telegram",
    "vk",
    "ok",
    "email",
    "hlr",
    "voice",
    "mms",
    "bot",
    "bulk",
)
API_CHARSETS = (
    "UTF16BE",
    "UTF16LE",
    "CP1251",
    "UTF-8",
    "UTF-16BE",
    "UTF-16LE",
    "UCS-2BE",
    "UCS-2LE",
    "UCS2BE",
    "UCS2LE",
)
RECIPIENT_KINDS = ("phone", "email", "verbatim")
OVERRIDABLE = ("sender", "ttl", "send_date", "button", "action", "image")
PLACEHOLDERS = frozenset({"subject", "body", "from", "from_name", "to", "recipient", "domain"})


_DOMAIN_KEYS = {
    "type",
    "recipient",
    "text",
    "html",
    "max_length",
    "strip_signature",
    "rewrite",
    "allow_headers",
    "sender",
    "ttl",
    "charset",
    "button",
    "action",
    "image",
    "find_token",
    "kannel_status",
    "max_parts",
    "transliterate",
    "quiet_hours",
    "timezone",
    "quiet_hours_urgent",
    "aliases",
    "aliases_file",
    "images",
    "images_max_size",
    "limits",
    "repeat_window",
}
# The types whose text is (or, for a cascade, may end as) an SMS: see gateway.message.sms.
SMS_TYPES = frozenset({"sms", "bulk"})
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def parse_domains(value: Any, problems: v.Problems) -> dict[str, DomainConfig]:
    if value is None or value == {}:
        problems.add("domains", "at least one recipient domain is needed")
        return {}
    if not isinstance(value, dict):
        problems.add("domains", "must be a mapping of domain name to its settings")
        return {}
    domains: dict[str, DomainConfig] = {}
    for raw_name, settings in value.items():
        name = str(raw_name).strip().lower()
        path = f"domains[{raw_name}]"
        if not _DOMAIN_NAME.match(name):
            problems.add(path, f"{raw_name!r} is not a domain name")
            continue
        if name in domains:
            problems.add(path, "listed twice (domain names are case-insensitive)")
            continue
        if not isinstance(settings, dict):
            problems.add(path, "must be a mapping with at least `type`")
            continue
        domain = _domain(name, settings, path, problems)
        if domain is not None:
            domains[name] = domain
    check_notify(domains, problems)
    return domains


def _domain(
    name: str, data: dict[str, Any], path: str, problems: v.Problems
) -> DomainConfig | None:
    v.keys(data, path, _DOMAIN_KEYS, problems)
    if "type" not in data:
        problems.add(f"{path}.type", f"is required (one of {', '.join(MESSAGE_TYPES)})")
    # Without a valid type the other keys are still checked, except those judged by the type
    # (aliases: phone numbers or addresses; SMS-only keys), lest a typo in `type` bring
    # complaints about keys that are right.
    known_type = data.get("type") in MESSAGE_TYPES
    kind = v.choice(data, "type", path, MESSAGE_TYPES, "sms", problems)
    default_recipient = "email" if kind == "email" else "phone"
    fields: dict[str, str] = {}
    for key in ("sender", "button", "action", "image"):
        if data.get(key) is not None:
            fields[key] = v.value(data, key, path, v.text, "", problems)
    if data.get("ttl") is not None:
        fields["ttl"] = str(v.value(data, "ttl", path, v.integer(1), 1, problems))
    if data.get("charset") is not None:
        fields["charset"] = v.choice(data, "charset", path, API_CHARSETS, "UTF-8", problems)
    for flag in ("find_token", "kannel_status"):
        if v.value(data, flag, path, v.boolean, False, problems):
            fields[flag] = "1"
    domain = DomainConfig(
        name=name,
        type=kind,
        recipient=v.choice(data, "recipient", path, RECIPIENT_KINDS, default_recipient, problems),
        text=v.value(data, "text", path, template, None, problems),
        html=v.value(data, "html", path, v.boolean, True, problems),
        max_length=v.value(data, "max_length", path, v.integer(2), None, problems),
        strip_signature=v.value(data, "strip_signature", path, v.boolean, True, problems),
        rewrite=v.value(data, "rewrite", path, _rewrites, (), problems),
        allow_headers=v.value(data, "allow_headers", path, _overrides, frozenset(), problems),
        fields=fields,
        timezone=v.value(data, "timezone", path, zone, None, problems),
        repeat_window=v.value(data, "repeat_window", path, v.positive_duration, None, problems),
    )
    checked = _sms_and_quiet(domain, data, path, problems, known_type)
    checked = read_images(checked, data, path, problems, known_type)
    return checked if known_type else None


def _sms_and_quiet(
    domain: DomainConfig, data: dict[str, Any], path: str, problems: v.Problems, known_type: bool
) -> DomainConfig:
    for key in ("max_parts", "transliterate"):
        if known_type and data.get(key) not in (None, False) and domain.type not in SMS_TYPES:
            problems.add(
                f"{path}.{key}",
                f"only for types {', '.join(sorted(SMS_TYPES))} (this domain is {domain.type})",
            )
    quiet = None
    span = v.value(data, "quiet_hours", path, window, None, problems)
    urgent = v.choice(data, "quiet_hours_urgent", path, URGENT_CHOICES, "wait", problems)
    if span is not None:
        quiet = QuietHours(span[0], span[1], urgent_send=urgent == "send")
    elif "quiet_hours_urgent" in data and data.get("quiet_hours") is None:
        problems.add(f"{path}.quiet_hours_urgent", "needs quiet_hours")
    return dataclasses.replace(
        domain,
        max_parts=v.value(data, "max_parts", path, v.integer(1, 255), None, problems),
        transliterate=v.value(data, "transliterate", path, v.boolean, False, problems),
        quiet_hours=quiet,
        aliases=domain_aliases(data, domain, path, problems) if known_type else {},
        limits=parse_limits(data, domain, path, problems, known_type),
    )


def template(value: Any) -> str:
    text = v.text(value)
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"bad template: {exc} (write {{{{ and }}}} for literal braces)") from None
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            raise ValueError(
                f"unknown placeholder {{{name}}} (known: "
                f"{', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))})"
            )
    return text


def _rewrites(value: Any) -> tuple[PhoneRewrite, ...]:
    if not isinstance(value, list):
        raise ValueError("must be a list of {match: REGEX, replace: TEXT}")
    rules = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"match", "replace"}:
            raise ValueError(f"[{index}] must have exactly the keys match and replace")
        try:
            pattern = re.compile(str(item["match"]))
        except re.error as exc:
            raise ValueError(f"[{index}].match: not a regular expression: {exc}") from None
        replace = str(item["replace"])
        try:
            pattern.sub(replace, "0" * 11)
        except (re.error, IndexError) as exc:
            raise ValueError(f"[{index}].replace: {exc}") from None
        rules.append(PhoneRewrite(pattern, replace))
    return tuple(rules)


def _overrides(value: Any) -> frozenset[str]:
    if not isinstance(value, list):
        raise ValueError(f"must be a list drawn from {', '.join(OVERRIDABLE)}")
    unknown = [str(v) for v in value if v not in OVERRIDABLE]
    if unknown:
        raise ValueError(f"{', '.join(map(repr, unknown))}: not one of {', '.join(OVERRIDABLE)}")
    return frozenset(str(v) for v in value)
