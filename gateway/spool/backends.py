"""Which spool a config asks for: one SQLite file (`spool.path`, the default) or a PostgreSQL
database shared by several gateways (`spool.url`)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.config.model import SpoolConfig
from gateway.spool.interface import SpoolInterface
from gateway.spool.sqlite.store import SqliteSpool


def make_spool(config: SpoolConfig, *, wake: Callable[[], None] | None = None) -> SpoolInterface:
    """`wake` is called when something became due that nobody here was told of: another
    gateway of a shared spool made it so, or a commit ended after its caller stopped waiting
    (a client that hung up after the final dot; PostgreSQL's NOTIFY reaches us for that too)."""
    if config.url is None:
        return SqliteSpool(config.path, on_wake=wake)
    # asyncpg is imported only for a PostgreSQL spool: the SQLite default loads nothing new.
    from gateway.spool.pg.store import PgSpool

    return PgSpool(config.url.reveal(), on_notify=wake)


def describe(config: SpoolConfig) -> str:
    """The spool for a log line or an error: the file, or the database without its password."""
    if config.url is None:
        return str(config.path)
    from gateway.spool.pg.wire import safe_url

    return safe_url(config.url.reveal())
