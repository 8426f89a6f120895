"""What a non-editable `pip install .` ships."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path


def test_the_page_templates_are_package_data() -> None:
    """A non-editable `pip install .` ships only what pyproject names: every template must be
    matched by its package-data globs (the page's test, run from the checkout, would not see a
    missing one)."""
    root = Path(__file__).parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["gateway.status"]
    package = root / "gateway" / "status"
    templates = [
        p.relative_to(package).as_posix() for p in (package / "templates").rglob("*") if p.is_file()
    ]
    assert templates
    for name in templates:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in globs), name
