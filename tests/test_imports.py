"""What each process loads is part of its memory (issue 5): guard the imports that keep it down.

Each check runs in a fresh interpreter, since this test process has imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _loaded_after(module: str, prefixes: tuple[str, ...]) -> list[str]:
    code = (f"import json, sys, {module}; print(json.dumps(sorted("
            f"{{m.split('.')[0] for m in sys.modules}} & {set(prefixes)!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    loaded: list[str] = json.loads(result.stdout)
    return loaded


@pytest.mark.parametrize("module", ["gateway.app", "gateway.cli"])
def test_the_daemon_loads_no_http_library_until_configured_to(module: str) -> None:
    # The platform's HTTP runs in the sender process; aiohttp's server only with `http:`.
    assert _loaded_after(module, ("httpx", "aiohttp", "httpx_aiohttp")) == []


def test_the_sender_process_loads_no_yaml() -> None:
    assert _loaded_after("gateway.sender_process", ("yaml",)) == []


def test_the_status_server_loads_aiohttp() -> None:
    # The check above is only worth something if it can see aiohttp at all.
    assert _loaded_after("gateway.status", ("aiohttp",)) == ["aiohttp"]
