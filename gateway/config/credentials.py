"""Where a platform token comes from: the config text, a file, or a systemd credential.

`token: ${VAR}` is handled by the config's variable substitution; `token_file: PATH` reads a file
(a trailing newline is dropped, as `echo` leaves one); `token_credential: NAME` reads
`$CREDENTIALS_DIRECTORY/NAME`, where systemd puts what `LoadCredential=` loaded. Problems name the
key and the file, never the token.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("smtp2pulse.config")
TOKEN_KEYS = ("token", "token_file", "token_credential")
_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_.@-]+$")


def read_token(
    data: Mapping[str, Any],
    path: str,
    env: Mapping[str, str],
    problem: Callable[[str, str], None],
    *,
    secrets: bool = True,
) -> str:
    """The token `data` names through one of TOKEN_KEYS; "" when none is set or on a problem.

    With `secrets` false the keys are checked but no file or credential is read, and "" comes
    back: for the commands that read only the spool, run by an operator whose shell has neither
    the service's CREDENTIALS_DIRECTORY nor its token files."""
    given = [key for key in TOKEN_KEYS if data.get(key) not in (None, "")]
    if not given:
        return ""
    if len(given) > 1:
        problem(f"{path}.{given[0]}", f"set only one of {', '.join(TOKEN_KEYS)}")
        return ""
    key = given[0]
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, str | int):
        # Never echo the value: it may be the secret itself, misplaced.
        problem(f"{path}.{key}", "must be text")
        return ""
    if key == "token":
        return str(value)
    if key == "token_credential":
        name = str(value)
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not _CREDENTIAL_NAME.match(name):
            problem(f"{path}.{key}", f"{name!r} is not a credential name")
            return ""
        if not secrets:
            return ""
        if not directory:
            problem(
                f"{path}.{key}",
                "CREDENTIALS_DIRECTORY is not set (systemd sets it for a "
                f"unit with LoadCredential={name}:...)",
            )
            return ""
        file = Path(directory) / name
    else:
        file = Path(str(value))
        if not secrets:
            return ""
    try:
        with file.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            token = handle.read().decode("utf-8").rstrip("\r\n")
    except OSError as exc:
        problem(f"{path}.{key}", f"cannot read {str(file)!r}: {exc.strerror or exc}")
        return ""
    except UnicodeDecodeError:
        problem(f"{path}.{key}", f"{str(file)!r} is not UTF-8 text")
        return ""
    if not token.strip():
        problem(f"{path}.{key}", f"{str(file)!r} is empty")
    elif key == "token_file" and mode & (stat.S_IRGRP | stat.S_IROTH):
        # Taken all the same (a group may be meant to read it), but said: it is the key to
        # the platform account.
        log.warning(
            "%s.%s: %s is readable by %s (mode %04o); chmod 600 it",
            path,
            key,
            str(file),
            "others" if mode & stat.S_IROTH else "its group",
            stat.S_IMODE(mode),
        )
    return token
