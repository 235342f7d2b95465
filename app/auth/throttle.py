"""Throttling of failed credentials: slows password guessing and bcrypt exhaustion.

Failures are counted in Redis per identity (an email, a client address, a key prefix) in a
fixed window; past the limit the caller gets 429 before any bcrypt work is done. When Redis is
unavailable the throttle steps aside (the rate limiter reports Redis outages on its own).
"""

from __future__ import annotations

import hashlib
import logging

import redis

from app.store.redis import get_redis
from app.web.problems import Problem

log = logging.getLogger(__name__)

WINDOW_SECONDS = 15 * 60
MAX_FAILURES = 10


def _key(kind: str, ident: str) -> str:
    return f"sb:authfail:{kind}:{hashlib.sha256(ident.encode()).hexdigest()[:32]}"


def retry_after(**idents: str) -> int | None:
    """Seconds until ``kind=identity`` may try again when any has too many recent failures."""
    try:
        pipe = get_redis().pipeline(transaction=False)
        for kind, ident in idents.items():
            pipe.get(_key(kind, ident))
            pipe.ttl(_key(kind, ident))
        replies = pipe.execute()
    except redis.RedisError as exc:
        log.warning("credential throttle unavailable: %s", exc)
        return None
    for count, ttl in zip(replies[::2], replies[1::2], strict=True):
        if count is not None and int(count) >= MAX_FAILURES:
            return max(int(ttl), 1)
    return None


def too_many(wait: int) -> Problem:
    """The 429 answer for a throttled identity."""
    return Problem(
        429,
        f"Too many failed attempts; retry in {wait} seconds.",
        headers={"Retry-After": str(wait)},
    )


def refuse_if_throttled(**idents: str) -> None:
    """Raise 429 when any of ``kind=identity`` has too many recent failures."""
    wait = retry_after(**idents)
    if wait is not None:
        raise too_many(wait)


def record_failure(**idents: str) -> None:
    """Count one failed attempt for each ``kind=identity``."""
    try:
        pipe = get_redis().pipeline(transaction=False)
        for kind, ident in idents.items():
            pipe.set(_key(kind, ident), 0, ex=WINDOW_SECONDS, nx=True)  # the window opens
            pipe.incr(_key(kind, ident))
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("credential throttle unavailable: %s", exc)
