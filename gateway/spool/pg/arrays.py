"""Rows as the column arrays unnest() takes: one parameter a column, whatever the number of
rows, so a statement over a whole group commit is one round trip (sql.py and its parts)."""

from __future__ import annotations

from typing import Any


def columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]
