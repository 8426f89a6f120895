"""Who may send: the `smtp.auth` settings, and the policy each listener gets.

Read by gateway.config.smtp for the `smtp` section; the settings themselves are frozen in
gateway.config.model. A listener is a plain "host:port" (the section defaults apply)
or a mapping `{address, require_starttls, require_auth}`; implicit-TLS listeners come from
`smtp.tls.implicit_listen`.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import validation as v
from gateway.config.credentials import TOKEN_KEYS, read_token
from gateway.config.model import (
    AuthSettings,
    Listener,
    Secret,
    SmtpConfig,
    User,
)
from gateway.config.units import parse_duration, parse_hostport


@dataclass(frozen=True, slots=True)
class ListenerPolicy:
    implicit_tls: bool
    require_starttls: bool
    require_auth: bool
    offer_auth_in_clear: bool  # AUTH before any TLS (allow_without_tls)
    # Unknown credentials leave the session anonymous instead of failing: never where AUTH is
    # required, since there a 235 for any password would be an oracle and an open door.
    accept_any_credentials: bool = False


def policy_for(listener: Listener, smtp: SmtpConfig) -> ListenerPolicy:
    tls_settings, auth = smtp.tls, smtp.auth
    starttls = (
        listener.require_starttls
        if listener.require_starttls is not None
        else tls_settings is not None and tls_settings.require_starttls
    )
    required = (
        listener.require_auth
        if listener.require_auth is not None
        else auth is not None and auth.required
    )
    accept_any = (
        listener.accept_any_credentials
        if listener.accept_any_credentials is not None
        else auth is not None and auth.accept_any_credentials
    )
    return ListenerPolicy(
        implicit_tls=listener.implicit_tls,
        require_starttls=bool(starttls) and not listener.implicit_tls,
        require_auth=bool(required),
        offer_auth_in_clear=auth is not None and auth.allow_without_tls,
        accept_any_credentials=bool(accept_any) and not required,
    )


# --- reading ---------------------------------------------------------------------------------

_LISTENER_KEYS = {"address", "require_starttls", "require_auth", "accept_any_credentials"}


def listener_entry(item: Any, implicit_tls: bool = False) -> Listener:
    """One `listen` entry: "host:port" or {address, require_starttls, require_auth,
    accept_any_credentials}."""
    if not isinstance(item, dict):
        return Listener(*parse_hostport(item), implicit_tls=implicit_tls)
    unknown = sorted(str(k) for k in item if k not in _LISTENER_KEYS)
    if unknown:
        raise ValueError(
            f"unknown key {', '.join(unknown)} (known: {', '.join(sorted(_LISTENER_KEYS))})"
        )
    if "address" not in item:
        raise ValueError("a listener mapping needs `address: host:port`")
    starttls, auth, accept_any = (
        None if item.get(key) is None else v.boolean(item[key])
        for key in ("require_starttls", "require_auth", "accept_any_credentials")
    )
    if implicit_tls and starttls is not None:
        raise ValueError("require_starttls means nothing on an implicit-TLS listener")
    return Listener(
        *parse_hostport(item["address"]),
        require_starttls=starttls,
        require_auth=auth,
        implicit_tls=implicit_tls,
        accept_any_credentials=accept_any,
    )


_USER_KEYS = {"password_hash", "domains", "senders", *TOKEN_KEYS}


def read_auth(
    data: dict[str, Any], problems: v.Problems, env: Mapping[str, str], secrets: bool = True
) -> AuthSettings:
    path = "smtp.auth"
    v.keys(
        data,
        path,
        {
            "required",
            "allow_without_tls",
            "accept_any_credentials",
            "max_failures",
            "block_for",
            "users",
        },
        problems,
    )
    users_data = data.get("users") or {}
    users: dict[str, User] = {}
    if not isinstance(users_data, dict):
        problems.add(f"{path}.users", "must be a mapping of user name to its settings")
        users_data = {}
    for name, settings in users_data.items():
        user = _user(str(name), settings, f"{path}.users.{name}", problems, env, secrets)
        if user is not None:
            users[str(name)] = user
    defaults = AuthSettings(users={})
    return AuthSettings(
        users=users,
        # A section that lists users means "these may send": required unless said otherwise.
        required=v.value(data, "required", path, v.boolean, bool(users), problems),
        allow_without_tls=v.value(data, "allow_without_tls", path, v.boolean, False, problems),
        accept_any_credentials=v.value(
            data, "accept_any_credentials", path, v.boolean, False, problems
        ),
        max_failures=v.value(
            data, "max_failures", path, v.integer(1, 1000), defaults.max_failures, problems
        ),
        block_for=v.value(data, "block_for", path, parse_duration, defaults.block_for, problems),
    )


def _user(
    name: str, data: Any, path: str, problems: v.Problems, env: Mapping[str, str], secrets: bool
) -> User | None:
    if not isinstance(data, dict):
        problems.add(path, "must be a mapping with at least password_hash")
        return None
    v.keys(data, path, _USER_KEYS, problems)
    stored = data.get("password_hash")
    wrong = _hash_problem(stored)
    if wrong is not None:
        # The user is still read: the rest of its keys are checked, and no "no user is
        # configured" follows from this one mistake (the config is refused all the same).
        problems.add(f"{path}.password_hash", wrong)
    token = read_token(data, path, env, problems.add, secrets=secrets)
    return User(
        name=name,
        password_hash=Secret(str(stored) if wrong is None else ""),
        domains=v.value(data, "domains", path, _names(str.lower), frozenset(), problems),
        senders=v.value(data, "senders", path, _names(str), None, problems),
        token=Secret(token) if token else None,
    )


def _hash_problem(stored: Any) -> str | None:
    """What is wrong with a password_hash, in words that never repeat it: a value that is not a
    hash may be the password itself."""
    made_by = "the output of `smtp2pulse hash-password` (scrypt$...)"
    if stored is None or stored == "":
        return f"is required: {made_by}"
    if not isinstance(stored, str):
        return f"must be text: {made_by}"
    if not stored.startswith("scrypt$"):
        return f"is not a password hash (a password written here is never taken): give {made_by}"
    fields = stored.split("$")
    if len(fields) != 6:
        return (
            f"is a damaged scrypt hash: 6 fields separated by $ are expected, found "
            f"{len(fields)} (copied only in part?); give {made_by}"
        )
    _, n, r, p, salt, digest = fields
    if (
        not all(number.isdigit() and int(number) > 0 for number in (n, r, p))
        or int(n) & (int(n) - 1)
        or int(n) < 2
    ):
        return f"is a damaged scrypt hash: its cost fields are not scrypt's; give {made_by}"
    try:
        if not binascii.a2b_base64(salt.encode()) or not binascii.a2b_base64(digest.encode()):
            raise ValueError("empty")
    except (ValueError, binascii.Error):
        return f"is a damaged scrypt hash: its salt or digest is not base64; give {made_by}"
    return None


def _names(normal: Callable[[str], str]) -> Callable[[Any], frozenset[str]]:
    def convert(value: Any) -> frozenset[str]:
        if not isinstance(value, list) or not value:
            raise ValueError("must be a non-empty list")
        return frozenset(normal(v.text(item)) for item in value)

    return convert


def check_access(smtp: SmtpConfig, domains: Mapping[str, object], problems: v.Problems) -> None:
    """What only the whole config can tell: policies that no client could ever meet."""
    auth = smtp.auth
    if auth is not None:
        for user in auth.users.values():
            for domain in sorted(user.domains - set(domains)):
                problems.add(
                    f"smtp.auth.users.{user.name}.domains",
                    f"{domain!r} is not one of the served domains",
                )
    listeners = [*smtp.listen, *(smtp.tls.implicit_listen if smtp.tls else ())]
    for index, listener in enumerate(listeners):
        where = (
            f"smtp.listen[{index}]"
            if index < len(smtp.listen)
            else f"smtp.tls.implicit_listen[{index - len(smtp.listen)}]"
        )
        policy = policy_for(listener, smtp)
        if policy.require_starttls and smtp.tls is None:
            problems.add(f"{where}.require_starttls", "needs smtp.tls (cert and key)")
        if listener.accept_any_credentials and policy.require_auth:
            problems.add(
                f"{where}.accept_any_credentials",
                "cannot be true where AUTH is "
                "required: any password would pass; set require_auth: false there",
            )
        if not policy.require_auth:
            continue
        if auth is None or not auth.users:
            problems.add(
                f"{where}.require_auth" if listener.require_auth else "smtp.auth.users",
                "AUTH is required but no user is configured",
            )
        elif smtp.tls is None and not auth.allow_without_tls and not policy.implicit_tls:
            problems.add(
                "smtp.auth.allow_without_tls",
                f"AUTH is required on {listener} but is offered only over TLS, and "
                "smtp.tls is not set; configure TLS, or set allow_without_tls: true "
                "for legacy devices on a trusted network",
            )
