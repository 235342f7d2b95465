"""OpenID provider metadata (``/.well-known/openid-configuration``) and signing keys (JWKS).

Both are fetched through the SSRF-guarded session and cached in Redis for an hour, shared by
every process. The metadata's ``issuer`` must equal the configured issuer exactly (OpenID
Connect Discovery §4.3), which also refuses Entra ID's multi-tenant ``common`` endpoint, whose
metadata names the issuer template ``…/{tenantid}/v2.0``. ``signing_keys(refresh=True)`` skips
the cache: the ID token validator does that once when a token names an unknown key id.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import redis
import requests
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from app.outbound.guard import BlockedDestination
from app.outbound.oauth import GrantRefused, ProviderError, ProviderUnavailable
from app.outbound.session import outbound_session
from app.store.redis import get_redis

log = logging.getLogger(__name__)

CACHE_SECONDS = 3600
MAX_DOCUMENT_BYTES = 512 * 1024
REQUIRED_METADATA = ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")


def _cache_key(kind: str, url: str) -> str:
    return f"sb:oidc:{kind}:" + hashlib.sha256(url.encode()).hexdigest()


def _fetch_json(url: str, timeout: float, what: str) -> dict[str, Any]:
    try:
        response = outbound_session().get(
            url, timeout=timeout, allow_redirects=False, headers={"Accept": "application/json"}
        )
        body = response.content[: MAX_DOCUMENT_BYTES + 1]
    except BlockedDestination as exc:
        raise GrantRefused(
            f"{what}: refused by the SSRF guard ({str(exc).rsplit(': ', 1)[-1]})"
        ) from None
    except requests.RequestException as exc:
        raise ProviderUnavailable(f"{what}: could not be fetched ({type(exc).__name__})") from None
    if response.status_code != 200:
        kind = ProviderUnavailable if response.status_code >= 500 else GrantRefused
        raise kind(f"{what}: the provider answered HTTP {response.status_code}")
    try:
        document = json.loads(body) if len(body) <= MAX_DOCUMENT_BYTES else None
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise GrantRefused(f"{what}: the answer is not a JSON object")
    return document


def _cached(kind: str, url: str, timeout: float, what: str, refresh: bool) -> dict[str, Any]:
    key = _cache_key(kind, url)
    client = get_redis()
    if not refresh:
        try:
            raw = client.get(key)
        except redis.RedisError:
            raw = None
        if raw is not None:
            cached: dict[str, Any] = json.loads(raw)
            return cached
    document = _fetch_json(url, timeout, what)
    try:
        client.set(key, json.dumps(document), ex=CACHE_SECONDS)
    except redis.RedisError as exc:  # works uncached, just slower
        log.warning("could not cache %s: %s", what, exc)
    return document


def provider_metadata(issuer: str, timeout: float) -> dict[str, Any]:
    """The issuer's discovery document, checked (issuer equality, required endpoints)."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    metadata = _cached("meta", url, timeout, "OpenID discovery", refresh=False)
    if metadata.get("issuer") != issuer:
        raise GrantRefused(
            "OpenID discovery: the provider's issuer "
            f"{str(metadata.get('issuer'))[:200]!r} is not the configured issuer {issuer!r}"
        )
    missing = [name for name in REQUIRED_METADATA if not isinstance(metadata.get(name), str)]
    if missing:
        raise GrantRefused(f"OpenID discovery: the document lacks {', '.join(missing)}")
    return metadata


def signing_keys(jwks_uri: str, timeout: float, *, refresh: bool = False) -> KeySet:
    """The provider's public keys (``refresh`` bypasses the cache, e.g. after key rotation)."""
    document = _cached("jwks", jwks_uri, timeout, "JWKS", refresh=refresh)
    try:
        return KeySet.import_key_set(document)  # type: ignore[arg-type]
    except (JoseError, KeyError, TypeError, ValueError) as exc:
        raise GrantRefused(f"JWKS: the key set is not valid ({type(exc).__name__})") from None


__all__ = ["ProviderError", "provider_metadata", "signing_keys"]
