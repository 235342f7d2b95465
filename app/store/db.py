"""Database binding: one peewee ``DatabaseProxy`` bound from ``DATABASE_URL``.

SQLite gets WAL and a busy timeout so the API and workers can share one file, and every
transaction begins ``IMMEDIATE``: it takes the write lock up front (waiting up to the busy timeout
for it) instead of reading first and failing with ``database is locked`` when it later tries to
write after another connection committed. PostgreSQL URLs use peewee's connection pool.

In a gevent-patched process (the gateway and stream services) every request is a greenlet, and
peewee keeps one connection per greenlet: SQLite is then pooled too (opening a connection per
request costs more than most requests do), and psycopg2 waits for PostgreSQL through gevent's
hub instead of blocking the whole process. Either way a request holds a pooled connection only
while it uses the database: ``release_connection`` hands it back before a long wait (a proxied
upstream call, a stream), teardown does at the end.
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


POOL_OPTIONS = {"max_connections": 32, "stale_timeout": 300, "timeout": 10}


def open_database(
    url: str, busy_timeout_ms: int = 10_000, *, cooperative: bool = False
) -> peewee.Database:
    """Open (lazily) the database that ``url`` names.

    ``busy_timeout_ms``: how long a SQLite transaction waits for the write lock before failing.
    ``cooperative``: the process is gevent-patched (SQLite is pooled too).
    """
    scheme, sep, rest = url.partition("://")
    options: dict[str, Any] = {}
    if scheme in _POOLED_SCHEMES:
        url = f"{_POOLED_SCHEMES[scheme]}{sep}{rest}"
        options = dict(POOL_OPTIONS)
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
        if cooperative and scheme == "sqlite":
            url = f"sqlite+pool{sep}{rest}"
            options.update(POOL_OPTIONS)
    return connect(url, **options)


def _wait_cooperatively(conn: Any, timeout: float | None = None) -> None:
    """psycopg2 wait callback: poll the connection, yielding to gevent while it waits."""
    import psycopg2.extensions as pg
    from gevent.socket import wait_read, wait_write

    while True:
        state = conn.poll()
        if state == pg.POLL_OK:
            return
        if state == pg.POLL_READ:
            wait_read(conn.fileno(), timeout=timeout)
        elif state == pg.POLL_WRITE:
            wait_write(conn.fileno(), timeout=timeout)
        else:
            raise pg.OperationalError(f"bad state from poll: {state}")


def release_connection() -> None:
    """Hand this request's pooled connection back (a no-op for an unpooled one)."""
    if isinstance(database.obj, PooledDatabase) and not database.is_closed():
        database.close()


def init_app(app: Flask, *, cooperative: bool = False) -> None:
    """Bind the proxy to the configured database.

    Connections open on first use (peewee's autoconnect), one per thread (greenlet, when
    ``cooperative``). A pooled database (PostgreSQL; SQLite when ``cooperative``) gets its
    connection back at the end of every request. An unpooled SQLite connection stays open with
    its thread: reopening it per request costs more than most requests do (the last close even
    checkpoints and deletes the WAL file).
    """
    url = app.config["DATABASE_URL"]
    database.initialize(
        open_database(url, app.config["DATABASE_BUSY_TIMEOUT"], cooperative=cooperative)
    )
    if cooperative and url.startswith("postgres"):
        import psycopg2.extensions

        psycopg2.extensions.set_wait_callback(_wait_cooperatively)

    @app.teardown_appcontext
    def _release(exc: BaseException | None) -> None:
        release_connection()
