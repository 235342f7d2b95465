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
from datetime import datetime

import redis

from app.auth.access import (
    Principal,
    acting_tenant,
    check_key,
    key_rows,
    principal_of,
    snapshot_of,
)
from app.store.models import ApiKey, utcnow
from app.store.redis import get_redis
from app.web.problems import Problem

TOKEN_TTL = 60
TOKEN_PREFIX = "sbst_"  # noqa: S105 - the visible prefix of a token, not a secret
_TOKEN_KEY = "sb:stream:token:"  # noqa: S105 - a Redis key prefix


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(key_id: str, tenant_id: str, secret_prefix: str) -> str:
    """A new single-use token standing for ``key_id`` acting in ``tenant_id`` for
    :data:`TOKEN_TTL` seconds, bound to the secret (by its ``secret_prefix``) it was traded for."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    value = f"{key_id} {tenant_id} {secret_prefix}"
    try:
        get_redis().set(_TOKEN_KEY + _digest(token), value, ex=TOKEN_TTL)
    except redis.RedisError as exc:
        raise Problem(503, "Stream tokens are unavailable (Redis); retry shortly.") from exc
    return token


def redeem_token(token: str) -> tuple[str, str, str]:
    """The key id, tenant and secret prefix a token stands for, deleting the token; 401 if
    unknown, used or expired."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        raise Problem(401, "Malformed stream token.")
    try:
        name = _TOKEN_KEY + _digest(token)
        pipe = get_redis().pipeline(transaction=True)  # GET+DEL at once (GETDEL needs 6.2)
        pipe.get(name)
        pipe.delete(name)
        value, _ = pipe.execute()
    except redis.RedisError as exc:
        raise Problem(503, "Stream tokens are unavailable (Redis); retry shortly.") from exc
    if value is None:
        raise Problem(401, "Unknown, used or expired stream token: get a new one.")
    text = value.decode() if isinstance(value, bytes) else str(value)
    key_id, tenant_id, secret_prefix = (text.split(" ") + ["", ""])[:3]
    return key_id, tenant_id, secret_prefix


def secret_valid_until(row: ApiKey, secret_prefix: str) -> datetime | None:
    """Until when the secret with ``secret_prefix`` opens ``row`` (None: no end but the key's
    own expiry); 401 when it no longer does (rotated past its grace period)."""
    if secret_prefix == row.key_prefix:
        return None
    until = row.previous_valid_until
    if secret_prefix == row.previous_key_prefix and until is not None and until > utcnow():
        return until
    raise Problem(401, "This API key was rotated and its grace period is over.")


def principal_for_key(key_id: str, tenant_id: str, secret_prefix: str) -> Principal:
    """The key's current principal acting in ``tenant_id`` (revocation, expiry, the secret
    ``secret_prefix`` still valid, owner, tenant and address checked, as on every request);
    else 401/403."""
    row = key_rows().where(ApiKey.id == key_id).first()
    if row is None:
        raise Problem(401, "This API key has been revoked.")
    snapshot = snapshot_of(row, "")
    check_key(snapshot, None)
    secret_valid_until(row, secret_prefix)
    named = None if tenant_id == row.tenant_id else tenant_id
    return principal_of(snapshot, acting_tenant(snapshot, named))
