"""Database binding: one peewee ``DatabaseProxy`` bound from ``DATABASE_URL``.

SQLite gets WAL and a busy timeout so the API and workers can share one file, and every
transaction begins ``IMMEDIATE``: it takes the write lock up front (waiting up to the busy timeout
for it) instead of reading first and failing with ``database is locked`` when it later tries to
write after another connection committed. PostgreSQL URLs use peewee's connection pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peewee
from flask import Flask
from playhouse.db_url import connect
from playhouse.pool import PooledDatabase

database = peewee.DatabaseProxy()

_POOLED_SCHEMES = {"postgres": "postgres+pool", "postgresql": "postgresql+pool"}


def open_database(url: str, busy_timeout_ms: int = 10_000) -> peewee.Database:
    """Open (lazily) the database that ``url`` names.

    ``busy_timeout_ms``: how long a SQLite transaction waits for the write lock before failing.
    """
    scheme, sep, rest = url.partition("://")
    options: dict[str, Any] = {}
    if scheme in _POOLED_SCHEMES:
        url = f"{_POOLED_SCHEMES[scheme]}{sep}{rest}"
        options = {"max_connections": 32, "stale_timeout": 300, "timeout": 10}
    if scheme.startswith("sqlite"):
        path = rest.lstrip("/") if rest.startswith("//") else rest
        if path not in ("", ":memory:"):
            Path("/" + path.lstrip("/") if rest.startswith("/") else path).parent.mkdir(
                parents=True, exist_ok=True
            )
        options = {
            "lock_type": "IMMEDIATE",
            "pragmas": {
                "journal_mode": "wal",
                "busy_timeout": busy_timeout_ms,
                "foreign_keys": 1,
                "synchronous": "normal",
            },
        }
    return connect(url, **options)


def init_app(app: Flask) -> None:
    """Bind the proxy to the configured database.

    Connections open on first use (peewee's autoconnect), one per thread. A pooled database
    (PostgreSQL) gets its connection back at the end of every request. A SQLite connection
    stays open with its thread: reopening it per request costs more than most requests do
    (the last close even checkpoints and deletes the WAL file).
    """
    database.initialize(
        open_database(app.config["DATABASE_URL"], app.config["DATABASE_BUSY_TIMEOUT"])
    )

    @app.teardown_appcontext
    def _release(exc: BaseException | None) -> None:
        if isinstance(database.obj, PooledDatabase) and not database.is_closed():
            database.close()
