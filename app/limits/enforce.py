"""Flask glue for per-key rate limiting and usage metering.

``authenticate()`` calls :func:`enforce` once a key is verified: it counts the request with the
app's :class:`~app.limits.limiter.RateLimiter` and raises 429 over the limit, or 503 when Redis is
down (unless ``RATELIMIT_FAIL_OPEN``). An ``after_request`` hook then stamps ``RateLimit-Policy``
and ``RateLimit`` on every key-authenticated response, errors included, and counts the response
in the process's usage buffer (:mod:`app.limits.usage`), flushed to Redis every second; the gateway
adds proxied bytes to the same buffer once a stream ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from flask import Flask, Response, current_app, g

from app.limits.limiter import RateLimitDecision, RateLimiter, SharedLimit
from app.limits.quotas import quota_exceeded
from app.limits.usage import UsageBuffer
from app.metrics import instruments as metrics
from app.store.outage import RETRY_AFTER
from app.store.redis import connect
from app.web.problems import Problem

log = logging.getLogger(__name__)

__all__ = ["RequestUsage", "enforce", "get_limiter", "init_app", "usage_buffer"]


@dataclass
class RequestUsage:
    """What the usage counters learn about one key-authenticated request."""

    key_id: str
    rate_limited: bool = False
    tenant_id: str | None = None  # the tenant it acted in, once known


def policy_name(window_seconds: int) -> str:
    """The ``RateLimit-Policy`` name of a window: ``hour`` for 3600 s, else ``<n>s``."""
    return "hour" if window_seconds == 3600 else f"{window_seconds}s"


def get_limiter(app: Flask | None = None) -> RateLimiter:
    """The app's rate limiter, bound to its Redis client on first use."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    limiter: RateLimiter | None = app.extensions.get("ratelimiter")
    if limiter is None:
        window = int(app.config["RATELIMIT_WINDOW"])
        limiter = RateLimiter(
            connect(app),
            window_seconds=window,
            policy=policy_name(window),
            lease_seconds=app.config["RATELIMIT_LEASE_SECONDS"],
        )
        app.extensions["ratelimiter"] = limiter
    return limiter


def enforce(
    key_id: str,
    limit: int,
    *,
    tenant_limit: SharedLimit | None = None,
    watch: str | None = None,
    expect: str | None = None,
) -> RateLimitDecision | None:
    """Count this request against ``key_id``'s limit and its tenant's ``requests_per_hour``
    quota (one round trip); raise 429 over either, 503 if Redis is down.

    Returns the decision (also kept on ``g`` for the response headers), or None when rate
    limiting is disabled or Redis is down and ``RATELIMIT_FAIL_OPEN`` lets the request through.
    With ``expect`` (see ``RateLimiter.hit``) a request whose ``watch`` key differs is neither
    counted nor refused: the decision says ``counted=False`` and the caller decides again.
    """
    usage = g.usage = RequestUsage(key_id)
    if not current_app.config["RATELIMIT_ENABLED"]:
        return None
    try:
        decision = get_limiter().hit(key_id, limit, shared=tenant_limit, watch=watch, expect=expect)
    except redis.RedisError as exc:
        if current_app.config["RATELIMIT_FAIL_OPEN"]:
            log.warning("rate limiter unavailable, letting %s through (fail open): %s", key_id, exc)
            return None
        log.error("rate limiter unavailable, refusing %s (fail closed): %s", key_id, exc)
        raise Problem(
            503,
            "The rate limiter is unavailable, so the request was not processed; retry later.",
            headers={"Retry-After": str(RETRY_AFTER)},
        ) from exc
    if not decision.counted:
        g.pop("usage", None)
        return decision
    g.ratelimit = decision
    if not decision.allowed:
        usage.rate_limited = True
        metrics.rate_limited(key_id)
        if decision.by_shared and tenant_limit is not None:
            raise quota_exceeded(
                "requests_per_hour",
                f"This tenant's keys are limited to {tenant_limit.limit} requests per "
                f"{decision.window_seconds} seconds together (quota `requests_per_hour`); "
                f"retry after {decision.retry_after} seconds.",
                retry_after=decision.retry_after,
            )
        raise Problem(
            429,
            f"This API key is limited to {decision.limit} requests per "
            f"{decision.window_seconds} seconds; retry after {decision.retry_after} seconds.",
            headers=decision.headers(),
        )
    return decision


def usage_buffer(app: Flask | None = None) -> UsageBuffer:
    """The process's usage counters for ``app`` (flushed to Redis every second)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    buffer: UsageBuffer | None = app.extensions.get("usage_buffer")
    if buffer is None:
        buffer = app.extensions["usage_buffer"] = UsageBuffer(connect(app))
    return buffer


def _finish_response(response: Response) -> Response:
    """Add the rate-limit headers and count the response for key-authenticated requests."""
    usage: RequestUsage | None = g.get("usage")
    if usage is None:
        return response
    decision: RateLimitDecision | None = g.get("ratelimit")
    if decision is not None:
        response.headers.update(decision.headers())
    usage_buffer().count(
        usage.key_id,
        status=response.status_code,
        rate_limited=usage.rate_limited,
        tenant_id=usage.tenant_id,
    )
    return response


def init_app(app: Flask) -> None:
    """Register the response hook; the limiter itself is created on first use."""
    app.extensions["ratelimiter"] = None
    app.after_request(_finish_response)
