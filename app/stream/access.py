"""Who may read the live stream: API keys in a header, or short-lived single-use stream tokens.

Browsers' ``EventSource`` cannot send headers, so a frontend first trades its key for a token
(``POST /api/v1/stream/tokens``) and opens the stream with ``?token=…``. A token is valid for
:data:`TOKEN_TTL` seconds and for one connection; only its SHA-256 is stored (in Redis), and
redeeming it deletes it atomically (``GET`` and ``DEL`` in one transaction), so it cannot be
replayed.
"""

from __future__ import annotations

import hashlib
import secrets

import peewee
import redis

from app.auth.access import ROLE_SCOPES, Principal, client_ip, ip_allowed
from app.store.models import ApiKey, User, utcnow
from app.store.redis import get_redis
from app.web.problems import Problem

TOKEN_TTL = 60
TOKEN_PREFIX = "sbst_"  # noqa: S105 - the visible prefix of a token, not a secret
_TOKEN_KEY = "sb:stream:token:"  # noqa: S105 - a Redis key prefix


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(key_id: str) -> str:
    """A new single-use token standing for ``key_id`` for :data:`TOKEN_TTL` seconds."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        get_redis().set(_TOKEN_KEY + _digest(token), key_id, ex=TOKEN_TTL)
    except redis.RedisError as exc:
        raise Problem(503, "Stream tokens are unavailable (Redis); retry shortly.") from exc
    return token


def redeem_token(token: str) -> str:
    """The key id a token stands for, deleting the token; 401 if unknown, used or expired."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        raise Problem(401, "Malformed stream token.")
    try:
        name = _TOKEN_KEY + _digest(token)
        pipe = get_redis().pipeline(transaction=True)  # GET+DEL at once (GETDEL needs 6.2)
        pipe.get(name)
        pipe.delete(name)
        key_id, _ = pipe.execute()
    except redis.RedisError as exc:
        raise Problem(503, "Stream tokens are unavailable (Redis); retry shortly.") from exc
    if key_id is None:
        raise Problem(401, "Unknown, used or expired stream token: get a new one.")
    return key_id.decode() if isinstance(key_id, bytes) else str(key_id)


def principal_for_key(key_id: str) -> Principal:
    """The key's current principal (revocation, expiry, owner, address checked); else 401/403."""
    row = (
        ApiKey.select(ApiKey, User)
        .join(User, peewee.JOIN.LEFT_OUTER, on=(ApiKey.created_by == User.id))
        .where(ApiKey.id == key_id)
        .first()
    )
    if row is None or row.revoked_at is not None:
        raise Problem(401, "This API key has been revoked.")
    if row.expires_at is not None and row.expires_at <= utcnow():
        raise Problem(401, "This API key has expired.")
    user: User | None = row.created_by if row.created_by_id else None
    if user is not None and user.disabled:
        raise Problem(401, "The owner of this API key is disabled.")
    if not ip_allowed(client_ip(), row.allowed_ips):
        raise Problem(403, "This API key may not be used from your address.")
    scopes = frozenset(row.permissions or ())
    if user is not None:
        scopes &= ROLE_SCOPES.get(user.role, frozenset())
    return Principal(key=row, user=user, scopes=scopes)
