"""Store outages: the errors that mean "the database or Redis is unreachable", told in one line.

The web layer answers them with 503 and ``Retry-After``; workers and their threads log one line
and try again, instead of ending (or filling the log with tracebacks).
"""

from __future__ import annotations

import peewee
import redis
from playhouse.pool import MaxConnectionsExceeded

DATABASE_DOWN: tuple[type[Exception], ...] = (
    peewee.OperationalError,
    peewee.InterfaceError,
    MaxConnectionsExceeded,
)
#: Either store unreachable (or Redis refusing: read-only after a failover, loading, out of
#: memory): what a request answers with 503.
STORE_DOWN = DATABASE_DOWN + (redis.RedisError,)
#: What a worker rides out: any Redis error (a restarted, loading or read-only server included).
WORKER_SURVIVES = DATABASE_DOWN + (redis.RedisError,)
#: Seconds a client is told to wait before retrying while a store is down.
RETRY_AFTER = 5


# SQLite reports a broken statement (a bug, not an outage) as OperationalError too.
_SQLITE_STATEMENT_ERRORS = (
    "no such table",
    "no such column",
    "no such function",
    "has no column named",
    "syntax error",
    "too many sql variables",
    "ambiguous column",
    "already exists",
)


def is_outage(exc: BaseException) -> bool:
    """True unless ``exc`` is a database error that a broken statement caused (a bug: 500)."""
    if isinstance(exc, peewee.OperationalError):
        text = str(exc).lower()
        return not any(marker in text for marker in _SQLITE_STATEMENT_ERRORS)
    return True


def which_store(exc: BaseException) -> str:
    """``"database"`` or ``"Redis"``: the store ``exc`` came from."""
    return "Redis" if isinstance(exc, redis.RedisError) else "database"


def describe(exc: BaseException) -> str:
    """One line for the log: the store and the first line of the driver's message."""
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    return f"{which_store(exc)} unavailable ({reason})"
