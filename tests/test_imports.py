"""What each process loads is part of its memory (issue 5): guard the imports that keep it down.

Each check runs in a fresh interpreter, since this test process has imported everything. The
daemon's checks build a `Gateway` (nothing is started), so the imports its constructor makes
for the sender mode and the `http:` section count too.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import base_config

HTTP_LIBRARIES = ("httpx", "aiohttp", "httpx_aiohttp")


def _loaded_after(code: str, prefixes: tuple[str, ...], **env: str) -> list[str]:
    script = (
        f"import json, sys\n{code}\nprint(json.dumps(sorted("
        f"{{m.split('.')[0] for m in sys.modules}} & {set(prefixes)!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, **env},
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def _gateway(tmp_path: Path, *, http: bool) -> str:
    data = base_config(tmp_path / "spool.sqlite3", "http://127.0.0.1:9/api/v1/bulk")
    if http:
        data["http"] = {"listen": "127.0.0.1:0"}
    return (
        "from gateway.app import Gateway\nfrom gateway.config.loader import parse_config\n"
        f"Gateway(parse_config({data!r}, env={{}}))"
    )


def test_the_daemon_with_a_sender_process_and_no_http_section_loads_no_http_library(
    tmp_path: Path,
) -> None:
    code = _gateway(tmp_path, http=False)
    assert _loaded_after(code, HTTP_LIBRARIES, SMTP2PULSE_SENDER="process") == []


@pytest.mark.parametrize(
    ("mode", "http", "expected"),
    [
        ("process", True, ["aiohttp"]),  # the status server only
        ("inline", False, ["aiohttp", "httpx", "httpx_aiohttp"]),  # the platform's client
    ],
)
def test_what_the_daemon_loads_follows_its_config(
    tmp_path: Path, mode: str, http: bool, expected: list[str]
) -> None:
    # The positive cases: the check above can see these libraries when they are there.
    code = _gateway(tmp_path, http=http)
    assert _loaded_after(code, HTTP_LIBRARIES, SMTP2PULSE_SENDER=mode) == expected


def test_the_sender_process_loads_no_yaml() -> None:
    assert _loaded_after("import gateway.delivery.sender_child", ("yaml",)) == []


def test_the_status_page_loads_jinja2_only_when_first_rendered(tmp_path: Path) -> None:
    code = _gateway(tmp_path, http=True)
    assert _loaded_after(code, ("jinja2",)) == []
    rendered = code.replace("Gateway(parse_config", "g = Gateway(parse_config") + (
        "\nimport asyncio\nfrom gateway.status.page import StatusPage\n"
        "page = StatusPage(lambda: g.config, g.spool, lambda: True, lambda: True, lambda: '')\n"
        "asyncio.run(page._render('message.html', queue_id='X', detail=None))"
    )
    assert _loaded_after(rendered, ("jinja2",)) == ["jinja2"]  # the check sees it when there


def test_the_sqlite_spool_loads_no_postgresql_driver(tmp_path: Path) -> None:
    assert _loaded_after(_gateway(tmp_path, http=True), ("asyncpg",)) == []


def test_a_postgresql_spool_loads_its_driver(tmp_path: Path) -> None:
    # The positive case: the check above can see asyncpg when it is there. Nothing connects.
    data = base_config(tmp_path / "spool.sqlite3", "http://127.0.0.1:9/api/v1/bulk")
    del data["spool"]["path"]
    data["spool"]["url"] = "postgresql://nobody@127.0.0.1:9/none"
    code = (
        "from gateway.app import Gateway\nfrom gateway.config.loader import parse_config\n"
        f"Gateway(parse_config({data!r}, env={{}}))"
    )
    assert _loaded_after(code, ("asyncpg",)) == ["asyncpg"]


# --- the layer order (gateway/__init__.py's docstring) ------------------------------------------

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"
LAYERS = [
    "config",
    "spool",
    "message",
    "delivery",
    "shown",
    "status",
    "smtp",
    "app",
    "queue_cli",
    "preview_cli",
    "cli",
]
# Anyone may import these: the exception tree, the component protocol, logging, the loop
# helpers, masking, systemd's notify, how a moment reads, and the metrics every stage counts into.
FOR_EVERYONE = {
    "errors",
    "component",
    "logs",
    "loops",
    "privacy",
    "sdnotify",
    "times",
    "status.metrics",
}
# Commands above a part of the tree only: what each may import besides FOR_EVERYONE.
COMMANDS = {
    "queue_cli": {"config", "spool", "shown"},
    "preview_cli": {"config", "spool", "message", "delivery", "smtp", "queue_cli"},
    "__main__": {"cli"},
}


def _unit(module: str) -> str:
    """What the order speaks of: `status.metrics`, else the top package or module."""
    parts = module.split(".")[1:]
    return "status.metrics" if parts[:2] == ["status", "metrics"] else parts[0]


def _is_module(name: str) -> bool:
    path = GATEWAY.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports() -> list[tuple[str, str]]:
    """(importing module, imported module) for every import of gateway code in gateway/,
    including those inside functions and under TYPE_CHECKING. (gateway/ has no relative
    imports; the check below would see one as foreign code, so one fails the test.)"""
    found = []
    for path in sorted(GATEWAY.rglob("*.py")):
        parts = path.relative_to(GATEWAY.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{module}: a relative import"
                base = node.module or ""
                names = [
                    f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base
                    for alias in node.names
                ]
            else:
                continue
            found += [(module, name) for name in names if name.startswith("gateway.")]
    return found


def _allowed(importer: str, imported: str) -> bool:
    source, target = _unit(importer), _unit(imported)
    if importer == "gateway" or source == target or target in FOR_EVERYONE:
        return True
    if source in COMMANDS:
        return target in COMMANDS[source]
    if source == "status.metrics" or target not in LAYERS or source not in LAYERS:
        return source == "status.metrics" and target == "status"  # its own package
    return LAYERS.index(target) < LAYERS.index(source)


def test_no_module_imports_against_the_layer_order() -> None:
    imports = _imports()
    assert len(imports) > 100  # the walk sees the tree
    against = sorted({(a, b) for a, b in imports if not _allowed(a, b)})
    assert against == []


def test_the_layer_check_sees_an_import_against_the_order() -> None:
    assert not _allowed("gateway.spool.base", "gateway.message.prepare")
    assert not _allowed("gateway.config.loader", "gateway.spool.rows")
    assert not _allowed("gateway.queue_cli", "gateway.delivery.worker")
    assert _allowed("gateway.smtp.handler", "gateway.spool")
    assert _allowed("gateway.delivery.worker", "gateway.status.metrics")
