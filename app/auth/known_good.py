"""Key secrets known to be correct, shared by every process through Redis.

When the service mints or rotates a key (``app.auth.issuing``) and each time bcrypt accepts
one, a SHA-256 of the secret is kept in Redis under a fingerprint of the stored hash (so a
rotation forgets the old one) for ``KNOWN_GOOD_TTL`` seconds. When wrong secrets have
throttled a key prefix from an address, a presented secret matching this digest still gets in,
checked without bcrypt: knowing a key's prefix is not enough to lock the key out. Key secrets
are 238-bit random strings, so their SHA-256 gives nothing away.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

import redis

from app.store.redis import get_redis

log = logging.getLogger(__name__)

KNOWN_GOOD_TTL = 30 * 24 * 3600


def _name(hashed: str) -> str:
    return "sb:keyok:" + hashlib.sha256(hashed.encode()).hexdigest()[:32]


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def remember(raw: str, hashed: str) -> None:
    """Record that ``raw`` is the secret of ``hashed`` (minted here, or accepted by bcrypt)."""
    try:
        get_redis().set(_name(hashed), _digest(raw), ex=KNOWN_GOOD_TTL)
    except redis.RedisError as exc:
        log.warning("could not record a verified key: %s", exc)


def is_known_good(raw: str, hashed: str) -> bool:
    """True when ``raw`` is the secret bcrypt already accepted against ``hashed``."""
    try:
        stored = get_redis().get(_name(hashed))
    except redis.RedisError as exc:
        log.warning("could not read verified keys: %s", exc)
        return False
    if stored is None:
        return False
    value = stored.decode() if isinstance(stored, bytes) else str(stored)
    return hmac.compare_digest(value, _digest(raw))
