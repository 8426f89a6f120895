"""`domains.NAME.aliases`: local parts that name a person or a group, checked at load.

A name is matched without regard to case; each target is checked as a `RCPT TO` local part of
its domain is, so that a typo in a phone list is a config error naming its key, not a message
refused (or sent to the wrong number) at night.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config import validation as v
from gateway.config.recipients import EMAIL_LOCAL, recipient_value
from gateway.errors import BadRecipient

if TYPE_CHECKING:
    from gateway.config.model import DomainConfig

# Enough for any company's duty rota; a group larger than max_recipients can never be sent to.
MAX_TARGETS = 1000
# What one `aliases` or `aliases_file` may expand to (each name's recipients, summed): every
# one is checked at load and kept in memory. YAML anchors let 90 KB name 3,000 groups of 1,000
# (3 million checks, 45 s); such a file is refused before any of them.
MAX_EXPANDED = 100_000
MAX_FILE_BYTES = 16 * 1024 * 1024
# A file of bad rows is named by its first few problems, not by a line for each.
MAX_PROBLEMS = 20


def domain_aliases(
    data: Mapping[str, Any], domain: DomainConfig, path: str, problems: v.Problems
) -> Mapping[str, tuple[str, ...]]:
    """`aliases` and the aliases of `aliases_file`; a name may be in one of them only."""
    aliases = dict(parse_aliases(data.get("aliases"), domain, f"{path}.aliases", problems))
    if data.get("aliases_file") is None:
        return aliases
    where = f"{path}.aliases_file"
    listed = read_aliases_file(data["aliases_file"], where, problems)
    for name, targets in parse_aliases(listed, domain, where, problems).items():
        if name in aliases:
            problems.add(f"{where}.{name}", "also in aliases")
        aliases[name] = targets
    return aliases


def read_aliases_file(value: Any, path: str, problems: v.Problems) -> dict[str, Any] | None:
    """A phone list kept elsewhere: YAML (as `aliases`) or CSV rows `name,recipient`, where a
    name on several rows is a group; blank rows and rows starting with # are skipped."""
    file = Path(str(value))
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            problems.add(path, f"{file} is over {MAX_FILE_BYTES // (1024 * 1024)} MiB")
            return None
        content = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(path, f"cannot read {file}: {getattr(exc, 'strerror', None) or exc}")
        return None
    if file.suffix.lower() != ".csv":
        import yaml  # here: the sender process imports this module and keeps yaml out of memory

        try:
            listed = yaml.safe_load(content)
        except yaml.YAMLError as exc:
            problems.add(path, f"{file} is not YAML: {exc}")
            return None
        except RecursionError:
            # PyYAML builds nested collections recursively: thousands of "[" exhaust the stack.
            problems.add(path, f"{file} is nested too deeply to be a list of aliases")
            return None
        return {} if listed is None else listed
    groups: dict[str, list[str]] = {}
    rows = 0
    for number, row in enumerate(csv.reader(content.splitlines()), 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2:
            problems.add(path, f"{file} line {number}: not name,recipient")
            continue
        groups.setdefault(row[0].strip().lower(), []).append(row[1].strip())
        rows += 1
        if rows > MAX_EXPANDED:
            problems.add(path, _too_many(str(file)))
            return None
    return dict(groups)


def _too_many(what: str) -> str:
    return (
        f"more than {MAX_EXPANDED} recipients in all ({what}; each name's recipients "
        f"summed): split the list or shorten it"
    )


def parse_aliases(
    value: Any, domain: DomainConfig, path: str, problems: v.Problems
) -> Mapping[str, tuple[str, ...]]:
    """Lower-cased name -> the `sent_to` of each target, in order, each once."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(
            path,
            "must be a mapping of name to a recipient or a list of them "
            '(duty: ["79001234567", "79007654321"])',
        )
        return {}
    # Counted before any is checked; a list repeated through YAML anchors counts each time.
    expanded = sum(len(t) if isinstance(t, list) else 1 for t in value.values())
    if expanded > MAX_EXPANDED:
        problems.add(path, _too_many(f"{len(value)} names"))
        return {}
    aliases: dict[str, tuple[str, ...]] = {}
    first = len(problems.lines)
    for raw_name, targets in value.items():
        if len(problems.lines) - first >= MAX_PROBLEMS:
            problems.add(path, f"more problems not listed (the first {MAX_PROBLEMS} above)")
            break
        name = str(raw_name).strip().lower()
        where = f"{path}.{raw_name}"
        if not EMAIL_LOCAL.match(name) or name.startswith(".") or name.endswith("."):
            problems.add(where, f"{raw_name!r} is not a local part (letters, digits, . - _ +)")
            continue
        if name in aliases:
            problems.add(where, "listed twice (names are matched without regard to case)")
            continue
        shadowed = _recipient_named(name, domain)
        if shadowed is not None:
            # Mail to that number or address would silently go to the alias's group instead.
            problems.add(
                where,
                f"{raw_name!r} is itself a recipient of this domain "
                f"({shadowed}); an alias must not reroute it",
            )
            continue
        if isinstance(targets, (str, int)) and not isinstance(targets, bool):
            targets = [targets]
        if not isinstance(targets, list) or not targets:
            problems.add(where, "must be a recipient or a non-empty list of recipients")
            continue
        if len(targets) > MAX_TARGETS:
            problems.add(where, f"more than {MAX_TARGETS} recipients")
            continue
        resolved: dict[str, None] = {}  # in order, each once
        for index, target in enumerate(targets):
            at = f"{where}[{index}]" if len(targets) > 1 else where
            if isinstance(target, bool) or not isinstance(target, (str, int)):
                problems.add(at, "must be a recipient (a string)")
                continue
            try:
                sent_to = recipient_value(str(target).strip(), domain)
            except BadRecipient as exc:
                problems.add(at, str(exc))
                continue
            resolved.setdefault(sent_to)
        if resolved:
            aliases[name] = tuple(resolved)
    return aliases


def _recipient_named(name: str, domain: DomainConfig) -> str | None:
    """The recipient `name` reaches without the alias, for phone and e-mail domains; a domain
    of verbatim ids has no other shape to tell an alias by, so its aliases stand."""
    if domain.recipient == "verbatim":
        return None
    try:
        return recipient_value(name, domain)
    except BadRecipient:
        return None
