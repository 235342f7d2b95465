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
REDIS_DOWN: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
#: Either store unreachable: what a request answers with 503.
STORE_DOWN = DATABASE_DOWN + REDIS_DOWN
#: What a worker rides out: any Redis error (a restarted, loading or read-only server included).
WORKER_SURVIVES = DATABASE_DOWN + (redis.RedisError,)
#: Seconds a client is told to wait before retrying while a store is down.
RETRY_AFTER = 5


def which_store(exc: BaseException) -> str:
    """``"database"`` or ``"Redis"``: the store ``exc`` came from."""
    return "Redis" if isinstance(exc, redis.RedisError) else "database"


def describe(exc: BaseException) -> str:
    """One line for the log: the store and the first line of the driver's message."""
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    return f"{which_store(exc)} unavailable ({reason})"
