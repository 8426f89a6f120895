"""`${VAR}` in the config file: replaced from the environment before anything is validated."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway.config import validation as v
from gateway.config.credentials import TOKEN_KEYS

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
# Keys whose ${VAR} a config loaded without its secrets (for `queue`) may leave unset.
SECRET_KEYS = frozenset({*TOKEN_KEYS, "callback_secret"})


def substitute_env(
    node: Any,
    path: str,
    env: Mapping[str, str],
    problems: v.Problems,
    secrets: bool = True,
    done: dict[int, Any] | None = None,
) -> Any:
    """`node` with every ${VAR} (or ${VAR:-default}) in its strings replaced from `env`; an unset
    one without a default is a problem at its key path."""
    # A collection YAML reuses through an anchor is substituted once (`done`, by identity):
    # walking every use of a nested anchor ("billion laughs") takes exponential time.
    done = {} if done is None else done
    if isinstance(node, dict | list) and id(node) in done:
        return done[id(node)]
    if isinstance(node, dict):
        mapping: dict[Any, Any] = {}
        done[id(node)] = mapping  # before its members: an anchor may hold itself
        for key, value in node.items():
            mapping[key] = substitute_env(
                value, _child_path(path, key), env, problems, secrets, done
            )
        return mapping
    if isinstance(node, list):
        items: list[Any] = []
        done[id(node)] = items
        items.extend(
            substitute_env(item, f"{path}[{i}]", env, problems, secrets, done)
            for i, item in enumerate(node)
        )
        return items
    if isinstance(node, str) and "${" in node:

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            if not secrets and path.rpartition(".")[2] in SECRET_KEYS:
                return ""  # the service's environment has it; a spool reader needs it not
            problems.add(
                path,
                f"environment variable {name} is not set "
                f"(write ${{{name}:-default}} to make it optional)",
            )
            return ""

        return _ENV_REF.sub(replace, node)
    return node


def _child_path(path: str, key: object) -> str:
    if path == "domains":
        return f"domains[{key}]"
    return v.join(path, str(key))
