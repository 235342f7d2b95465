"""Access tokens of ``oauth2_client_credentials`` webhook auth: fetched once, shared, cached.

A token is fetched from the webhook's ``token_url`` with authlib (RFC 6749 §4.4) through the
SSRF-guarded transport, and kept — encrypted — in Redis until ``REFRESH_MARGIN`` before it
expires (a token without ``expires_in`` is kept ``DEFAULT_LIFETIME``), so every worker shares
it; each process also remembers it for as long. At most one fetch per webhook runs at a time
across workers (a Redis lock): the others wait for it and read its token. The cache is keyed
by a digest of the stored auth, so changing the client id, secret, scope or endpoint fetches a
fresh token; a ``401`` from the endpoint forgets the token (:func:`forget`), so the next
attempt fetches another.

Failures raise :class:`TokenFailed` with a message safe to store in delivery history (the
provider's error code, never a secret): the delivery's attempt fails with it and is retried
on the webhook's schedule; a token endpoint the SSRF guard refuses fails for good.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import redis
from redis.exceptions import LockError

from app.outbound.guard import REFUSED
from app.outbound.oauth import describe, oauth_session
from app.store import jsoncodec
from app.store.redis import get_redis
from app.store.secretbox import decrypt, encrypt

#: A token is refreshed this long before it expires (or after 9/10 of a shorter lifetime).
REFRESH_MARGIN = 60.0
DEFAULT_LIFETIME = 300.0
#: How long a sender waits for another worker's fetch before failing the attempt (retried).
LOCK_WAIT_SECONDS = 15.0
#: A delivery's error when the SSRF guard refuses the token endpoint (not retried; changing
#: the webhook's ``auth`` or ``url`` sends it again, as for a refused ``url``).
TOKEN_URL_REFUSED = f"token endpoint {REFUSED}"
_CACHE_LIMIT = 1024
_remembered: dict[str, tuple[str, float]] = {}  # digest -> (token, monotonic expiry)
_remembered_lock = threading.Lock()


class TokenFailed(Exception):
    """No access token; ``final`` when retrying cannot help until the auth changes."""

    def __init__(self, message: str, final: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.final = final


def _digest(webhook_id: str, auth: dict[str, Any]) -> str:
    text = jsoncodec.dumps([webhook_id, auth], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def access_token(webhook_id: str, auth: dict[str, Any], timeout: float) -> str:
    """A valid access token for the webhook's stored ``auth`` (see the module doc)."""
    digest = _digest(webhook_id, auth)
    with _remembered_lock:
        found = _remembered.get(digest)
    if found is not None and found[1] > time.monotonic():
        return found[0]
    key = f"sb:webhook-token:{digest}"
    try:
        client = get_redis()
        shared = _shared(client, key)
        if shared is not None:
            return shared
        lock = client.lock(f"{key}:lock", timeout=timeout + 30, blocking_timeout=LOCK_WAIT_SECONDS)
        if not lock.acquire():
            raise TokenFailed("another worker's token request is taking too long")
    except redis.RedisError as exc:
        raise TokenFailed(f"the token cache (Redis) is unavailable: {type(exc).__name__}") from exc
    try:
        return _shared(client, key) or _fetch(client, key, auth, timeout)
    finally:
        try:
            lock.release()
        except (LockError, redis.RedisError):  # expired meanwhile: nothing to release
            pass


def _shared(client: redis.Redis, key: str) -> str | None:
    """The token another process stored, remembered here too; None when there is none."""
    raw = client.get(key)
    if raw is None:
        return None
    ttl = client.pttl(key)
    token = decrypt(raw.decode() if isinstance(raw, bytes) else str(raw))
    _remember(key.rsplit(":", 1)[-1], token, max(0.0, ttl / 1000))
    return token


def _remember(digest: str, token: str, seconds: float) -> None:
    with _remembered_lock:
        if len(_remembered) >= _CACHE_LIMIT:
            _remembered.clear()
        _remembered[digest] = (token, time.monotonic() + seconds)


def _fetch(client: redis.Redis, key: str, auth: dict[str, Any], timeout: float) -> str:
    session = oauth_session(
        client_id=auth["client_id"],
        client_secret=decrypt(auth["client_secret"]),
        timeout=timeout,
        auth_method=auth.get("token_auth_method", "client_secret_basic"),
    )
    extra = {"audience": auth["audience"]} if auth.get("audience") else {}
    try:
        with session:
            token = dict(
                session.fetch_token(
                    auth["token_url"],
                    grant_type="client_credentials",
                    scope=auth.get("scope"),
                    **extra,
                )
            )
    except Exception as exc:  # noqa: BLE001 - classified by describe, never re-raised raw
        problem = describe(exc, "token endpoint")
        if problem.error == "blocked":
            raise TokenFailed(TOKEN_URL_REFUSED, final=True) from None
        raise TokenFailed(problem.message) from None
    access = token.get("access_token")
    if not isinstance(access, str) or not access:
        raise TokenFailed("token endpoint: the answer has no access_token")
    lifetime = _lifetime(token.get("expires_in"))
    keep = lifetime - min(REFRESH_MARGIN, lifetime / 10)
    if keep > 0:
        client.set(key, encrypt(access), px=max(1, int(keep * 1000)))
        _remember(key.rsplit(":", 1)[-1], access, keep)
    return access


def _lifetime(expires_in: Any) -> float:
    try:
        seconds = float(expires_in)
    except (TypeError, ValueError):
        return DEFAULT_LIFETIME
    return seconds if 0 < seconds < 10 * 366 * 86400 else DEFAULT_LIFETIME


def forget(webhook_id: str, auth: dict[str, Any]) -> None:
    """Drop the webhook's cached token (the endpoint refused it): the next send fetches one."""
    digest = _digest(webhook_id, auth)
    with _remembered_lock:
        _remembered.pop(digest, None)
    try:
        get_redis().delete(f"sb:webhook-token:{digest}")
    except redis.RedisError:  # it expires by itself
        pass
