"""Per-request authentication: who is calling, with which scopes, from which address."""

from __future__ import annotations

import ipaddress
import logging
import time
import weakref
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import peewee
from flask import current_app, g, request

from app import ratelimiting
from app.auth.keys import VerifiedKeyCache, key_prefix
from app.config import ALL_SCOPES
from app.db import database
from app.models import ApiKey, User, utcnow
from app.problems import Problem

log = logging.getLogger(__name__)

ROLE_SCOPES = {
    "admin": frozenset(ALL_SCOPES),
    "member": frozenset(s for s in ALL_SCOPES if s != "admin"),
}
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of this request."""

    key: ApiKey
    user: User | None
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def has(self, scope: str) -> bool:
        return self.is_admin or scope in self.scopes

    def require(self, scope: str | None) -> Principal:
        """Raise 403 unless this principal holds ``scope``."""
        if scope and not self.has(scope):
            raise Problem(403, f"This API key lacks the `{scope}` scope.", required_scope=scope)
        return self


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": 'Bearer realm="switchboard"'})


def presented_key() -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key``, if any."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("X-API-Key") or None


def client_ip() -> str:
    """The client address: the socket peer, or what ProxyFix trusted from X-Forwarded-For."""
    return request.remote_addr or ""


def ip_allowed(ip: str, cidrs: list[str] | None) -> bool:
    """True when no allow-list is set or ``ip`` falls in one of ``cidrs``."""
    if not cidrs:
        return True
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def _key_cache() -> VerifiedKeyCache:
    cache = current_app.extensions.get("key_cache")
    if cache is None:
        cache = current_app.extensions["key_cache"] = VerifiedKeyCache(
            current_app.config["KEY_CACHE_TTL"]
        )
    return cache


_PREFIX_PLACEHOLDER = "\x00prefix\x00"
# Per database: the lookup query (for its cursor wrapper), its SQL text and its parameters.
_lookup_templates: weakref.WeakKeyDictionary[peewee.Database, tuple[Any, str, list[Any]]] = (
    weakref.WeakKeyDictionary()
)


def _key_lookup_query(prefix: str) -> Any:
    return (
        ApiKey.select(ApiKey, User)
        .join(User, peewee.JOIN.LEFT_OUTER, on=(ApiKey.created_by == User.id))
        .where((ApiKey.key_prefix == prefix) | (ApiKey.previous_key_prefix == prefix))
        .limit(1)
    )


def find_key_row(prefix: str) -> ApiKey | None:
    """The key whose current or previous prefix is ``prefix``, its owner joined, or None.

    This runs on every authenticated request, and peewee takes far longer to build the SQL
    than the database takes to run it, so the SQL is built once per database (with a
    placeholder prefix) and the row is hydrated by that query's own cursor wrapper, exactly as
    ``.first()`` would do, owner included.
    """
    db = database.obj
    template = _lookup_templates.get(db)
    if template is None:
        query = _key_lookup_query(_PREFIX_PLACEHOLDER)
        sql, params = query.sql()
        template = _lookup_templates[db] = (query, sql, params)
    query, sql, params = template
    bound = [prefix if param == _PREFIX_PLACEHOLDER else param for param in params]
    rows = query._get_cursor_wrapper(db.execute_sql(sql, bound))
    return next(iter(rows), None)


def verify_api_key(raw: str) -> ApiKey:
    """Return the live ``ApiKey`` row for a presented secret, or raise 401."""
    prefix = key_prefix(raw)
    if prefix is None:
        raise _unauthorized("Malformed API key.")
    row = find_key_row(prefix)
    if row is None:
        raise _unauthorized("Unknown API key.")
    now = utcnow()
    if row.key_prefix == prefix:
        hashed = row.key_hash
    elif row.previous_key_hash and row.previous_valid_until and row.previous_valid_until > now:
        hashed = row.previous_key_hash
    else:
        raise _unauthorized("This API key was rotated and its grace period is over.")
    if not _key_cache().verify(raw, hashed):
        raise _unauthorized("Unknown API key.")
    if row.revoked_at is not None:
        raise _unauthorized("This API key has been revoked.")
    if row.expires_at is not None and row.expires_at <= now:
        raise _unauthorized("This API key has expired.")
    return row


def _touch_last_used(row: ApiKey) -> None:
    """Record use at most once per minute per key, with a conditional UPDATE."""
    now = utcnow()
    if row.last_used_at is not None and now - row.last_used_at < LAST_USED_RESOLUTION:
        return
    cutoff = now - LAST_USED_RESOLUTION
    try:
        ApiKey.update(last_used_at=now).where(
            (ApiKey.id == row.id) & (ApiKey.last_used_at.is_null() | (ApiKey.last_used_at < cutoff))
        ).execute()
    except peewee.OperationalError:  # a busy SQLite file must not fail the request
        log.warning("could not record last_used_at for %s", row.id)


def authenticate() -> Principal:
    """Authenticate and rate-limit this request once and return the principal.

    Raises 401/403 problems for bad keys, 429 over the key's rate limit, 503 when the rate
    limiter is down and configured to fail closed.
    """
    principal: Principal | None = g.get("principal")
    if principal is not None:
        return principal
    raw = presented_key()
    if not raw:
        raise _unauthorized("An API key is required: send `Authorization: Bearer <key>`.")
    started = time.perf_counter()
    row = verify_api_key(raw)
    g.key_verify_ms = (time.perf_counter() - started) * 1000
    if not ip_allowed(client_ip(), row.allowed_ips):
        raise Problem(403, "This API key may not be used from your address.")
    user: User | None = row.created_by if row.created_by_id else None  # joined: no query
    if user is not None and user.disabled:
        raise _unauthorized("The owner of this API key is disabled.")
    scopes = frozenset(row.permissions or ())
    if user is not None:  # a key never holds more than its owner's role allows
        scopes &= ROLE_SCOPES.get(user.role, frozenset())
    principal = Principal(key=row, user=user, scopes=scopes)
    # Counted once the key is known good, before any scope check: 429/503 raise here.
    ratelimiting.enforce(row.id, row.rate_limit)
    g.principal = principal
    _touch_last_used(row)
    return principal
