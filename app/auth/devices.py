"""Login devices: a client that logged in before keeps logging in while others are throttled.

A successful password login returns a random ``device_token``, kept in Redis (as a SHA-256)
with the user's email for ``DEVICE_TTL`` seconds. A login presenting the token for that email is
throttled per device instead of per email and client address, so someone hammering an account
(or, behind a load balancer, the one shared address) cannot lock out its owner's known devices.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

import redis

from app.store.redis import get_redis

log = logging.getLogger(__name__)

DEVICE_TTL = 90 * 24 * 3600


def _name(token: str) -> str:
    return "sb:logindevice:" + hashlib.sha256(token.encode()).hexdigest()


def trusted(token: str | None, email: str) -> bool:
    """True when ``token`` was issued to a login of ``email`` and has not expired."""
    if not token:
        return False
    try:
        stored = get_redis().get(_name(token))
    except redis.RedisError as exc:
        log.warning("login devices unavailable: %s", exc)
        return False
    if stored is None:
        return False
    value = stored.decode() if isinstance(stored, bytes) else str(stored)
    return hmac.compare_digest(value, email)


def issue(email: str) -> str | None:
    """A new device token for ``email``, or None when Redis is unavailable."""
    token = secrets.token_urlsafe(32)
    try:
        get_redis().set(_name(token), email, ex=DEVICE_TTL)
    except redis.RedisError as exc:
        log.warning("login devices unavailable: %s", exc)
        return None
    return token
