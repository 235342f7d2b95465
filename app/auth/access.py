"""Per-request authentication: who is calling, with which scopes, from which address."""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import peewee
import redis
from flask import Flask, current_app, g, request

from app.auth import known_good
from app.auth.keys import KeySnapshot, VerifiedKeyCache, key_prefix
from app.auth.throttle import give_back, take_slot, too_many
from app.config import ALL_SCOPES
from app.limits.enforce import enforce as enforce_rate_limit
from app.limits.limiter import SharedLimit
from app.limits.quotas import requests_limit
from app.store.db import database
from app.store.models import ApiKey, Membership, Tenant, User, utcnow
from app.store.redis import get_redis
from app.web.problems import Problem

log = logging.getLogger(__name__)

# The role model (docs/keys.md, "Roles"): admins configure (integrations, connector configs and
# actions, OAuth connections, webhooks, alert rules, users, the audit log); members operate (send
# events, use the gateway, manage their own API keys) and read the rest; read-only users only read.
_READ_SCOPES = frozenset(s for s in ALL_SCOPES if s.endswith(":read"))
ROLE_SCOPES = {
    "admin": frozenset(ALL_SCOPES),
    "member": _READ_SCOPES | {"keys:write", "events:write", "gateway:use"},
    "readonly": _READ_SCOPES,
}
LAST_USED_RESOLUTION = timedelta(seconds=60)


#: The WSGI environ key through which the console's pages call the API as their signed-in
#: session (``app.console.delegate``); environ keys with a dot cannot come from a client.
DELEGATED_PRINCIPAL = "switchboard.principal"

#: Platform keys name the tenant a request acts on with this header (Stripe's
#: ``Stripe-Account``): a tenant's id or its ``external_id``.
TENANT_HEADER = "Switchboard-Tenant"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of this request and the tenant it acts in."""

    key: ApiKey
    user: User | None
    scopes: frozenset[str]
    tenant: Tenant
    role: str | None = None  # the owner's role in the key's tenant (platform admins: admin)

    @property
    def tenant_id(self) -> str:
        return str(self.tenant.id)

    @property
    def platform(self) -> bool:
        """A platform (operator) key: may manage tenants and act on any of them."""
        return bool(self.key.platform)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def has(self, scope: str) -> bool:
        return self.is_admin or scope in self.scopes

    def require(self, scope: str | None) -> Principal:
        """Raise 403 unless this principal holds ``scope``."""
        if scope and not self.has(scope):
            if self.role is not None and scope in (self.key.permissions or ()):
                raise Problem(
                    403,
                    f"The `{self.role}` role does not allow `{scope}`.",
                    required_scope=scope,
                )
            raise Problem(403, f"This API key lacks the `{scope}` scope.", required_scope=scope)
        return self

    def require_platform(self) -> Principal:
        """Raise 403 unless this is a platform key with the ``admin`` scope (an operator)."""
        if not (self.platform and self.is_admin):
            raise Problem(403, "Only an operator's platform key with `admin` may do this.")
        return self


def current_principal() -> Principal:
    """The principal of this request (``Blueprint.auth`` authenticated it)."""
    principal: Principal = g.principal
    return principal


def current_tenant_id() -> str:
    """The id of the tenant this request acts in: every tenant-owned query is scoped by it."""
    return current_principal().tenant_id


def role_of(user: User | None, membership: Membership | None) -> str | None:
    """A user's role in a tenant: admin for platform admins, else their membership's."""
    if user is None:
        return None
    if user.platform_admin:
        return "admin"
    return membership.role if membership is not None else None


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


# Any change that can invalidate a cached key (revocation, rotation, owner changes) sets this
# Redis key to a new random value; the rate-limit round trip reads it back on every request.
AUTH_EPOCH = "sb:auth:epoch"


def bump_auth_epoch(required: bool = False) -> None:
    """Invalidate every process's key snapshots once the current transaction commits.

    With ``required`` (revocation, rotation) the epoch also moves before the commit, and a
    Redis that cannot take it fails the change with a 503 (rolled back): a change either takes
    effect everywhere or is refused, never committed while cached snapshots keep the key alive.
    The bump after the commit still drops snapshots loaded in between from the old row.
    """
    if required and database.in_transaction():
        try:
            _new_epoch()
        except redis.RedisError as exc:
            log.error("could not bump the auth epoch: %s", exc)
            raise Problem(503, "Key changes are unavailable right now; retry later.") from exc

    def bump() -> None:
        for attempt in (1, 2):
            try:
                _new_epoch()
                return
            except redis.RedisError as exc:  # snapshots then expire with KEY_CACHE_TTL
                log.error("could not bump the auth epoch (attempt %d): %s", attempt, exc)

    database.after_commit(bump)


def _new_epoch() -> None:
    get_redis().set(AUTH_EPOCH, os.urandom(8).hex())
    limiter = current_app.extensions.get("ratelimiter")
    if limiter is not None:  # this process's leases were granted under the old epoch
        limiter.forget_leases()


def _read_epoch(create: bool = True) -> str | None:
    """The current auth epoch, or None if Redis is unreachable.

    With ``create``, an epoch Redis lost is created (so no old snapshot can match it); without,
    a lost one reads as None, which matches no snapshot either.
    """
    try:
        client = get_redis()
        if create:
            client.set(AUTH_EPOCH, os.urandom(8).hex(), nx=True)
        value = client.get(AUTH_EPOCH)
    except redis.RedisError:
        return None
    return value.decode() if isinstance(value, bytes) else value


def key_rows() -> Any:
    """Keys with their tenant (``home``), owner and owner's membership there, in one query.

    Not scoped by tenant, and cannot be: a presented key is what tells which tenant a request
    belongs to, so it is found by its prefix (unique across tenants) or id.
    """
    return (
        ApiKey.select(ApiKey, Tenant, User, Membership)
        .join(Tenant, on=(ApiKey.tenant_id == Tenant.id), attr="home")
        .switch(ApiKey)
        .join(User, peewee.JOIN.LEFT_OUTER, on=(ApiKey.created_by == User.id))
        .join(
            Membership,
            peewee.JOIN.LEFT_OUTER,
            on=(Membership.user == User.id) & (Membership.tenant_id == ApiKey.tenant_id),
            attr="membership",
        )
    )


def find_key_row(prefix: str) -> ApiKey | None:
    """The key whose current or previous prefix is ``prefix`` (see :func:`key_rows`), or None."""
    return (
        key_rows()
        .where((ApiKey.key_prefix == prefix) | (ApiKey.previous_key_prefix == prefix))
        .first()
    )


def snapshot_of(row: ApiKey, epoch: str) -> KeySnapshot:
    """A key row of :func:`key_rows` with what its checks need, as loaded at ``epoch``."""
    user: User | None = row.created_by if row.created_by_id else None  # joined: no query
    membership = getattr(user, "membership", None) if user is not None else None
    tenant = getattr(row, "home")  # noqa: B009 - joined by key_rows(), not a model field
    return KeySnapshot(
        row=row, user=user, epoch=epoch, tenant=tenant, role=role_of(user, membership)
    )


def _secret_matches(raw: str, hashed: str, attempt: str) -> bool:
    """Check ``raw`` against ``hashed``; wrong secrets are throttled per prefix and address.

    Each wrong secret costs a bcrypt check, so a slot is taken before it: ten from one address
    within the window stop further bcrypt work for that prefix and address (429), however many
    arrive at once. A secret known to be right (minted or verified, in this process or, via
    Redis, in any) is compared by digest and still gets in, so knowing a key's prefix cannot
    lock the key out.
    """
    cache = _key_cache()
    if cache.verified(raw, hashed):
        return True
    wait = take_slot(key_attempt=attempt)
    if wait is not None:
        if not known_good.is_known_good(raw, hashed):
            raise too_many(wait)
        cache.accept(raw, hashed)
        return True
    if not cache.verify(raw, hashed):
        return False  # the slot stays taken: a failure
    give_back(key_attempt=attempt)
    known_good.remember(raw, hashed)
    return True


def load_key(raw: str) -> KeySnapshot:
    """Find and bcrypt-verify the key row for a presented secret, or raise 401."""
    prefix = key_prefix(raw)
    if prefix is None:
        raise _unauthorized("Malformed API key.")
    epoch = _read_epoch()  # read before the row, so a concurrent change is never missed
    row = find_key_row(prefix)
    if row is None:
        raise _unauthorized("Unknown API key.")
    if row.key_prefix == prefix:
        hashed = row.key_hash
    elif row.previous_key_hash:
        hashed = row.previous_key_hash
    else:
        raise _unauthorized("Unknown API key.")
    if not _secret_matches(raw, hashed, f"{prefix}|{client_ip()}"):
        raise _unauthorized("Unknown API key.")
    cache = _key_cache()
    snapshot = snapshot_of(row, epoch or "")
    if epoch is not None:
        cache.remember(raw, snapshot)
    return snapshot


def check_key(snapshot: KeySnapshot, raw: str | None) -> None:
    """Revocation, expiry, rotation grace, owner, tenant and client address: checked on every
    request (``raw`` None: a stream token, whose key's secret was checked when it was issued)."""
    row, now = snapshot.row, utcnow()
    if row.revoked_at is not None:
        raise _unauthorized("This API key has been revoked.")
    if row.expires_at is not None and row.expires_at <= now:
        raise _unauthorized("This API key has expired.")
    if (
        raw is not None
        and raw[: len(row.key_prefix)] != row.key_prefix
        and not (row.previous_valid_until and row.previous_valid_until > now)
    ):
        raise _unauthorized("This API key was rotated and its grace period is over.")
    if snapshot.user is not None and snapshot.user.disabled:
        raise _unauthorized("The owner of this API key is disabled.")
    if snapshot.tenant.status == "deleting":
        raise _unauthorized("Unknown API key.")
    if row.platform:
        if snapshot.user is not None and not snapshot.user.platform_admin:
            raise _unauthorized("The owner of this platform key is no longer a platform admin.")
    else:
        if snapshot.user is not None and snapshot.role is None:
            raise _unauthorized("The owner of this API key is no longer a member of its tenant.")
        if snapshot.tenant.status == "suspended":
            raise Problem(
                403,
                "This tenant is suspended: its keys are refused until an operator resumes it.",
                type_slug="tenant-suspended",
                title="Tenant suspended",
            )
    if not ip_allowed(client_ip(), row.allowed_ips):
        raise Problem(403, "This API key may not be used from your address.")


class _TenantNames:
    """This process's memory of the tenants platform keys named, valid for one auth epoch
    (every change to a tenant's status moves the epoch)."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, tuple[str, Tenant | None]] = {}
        self._lock = threading.Lock()

    def find(self, name: str, epoch: str) -> Tenant | None:
        with self._lock:
            entry = self._entries.get(name)
        if entry is not None and entry[0] == epoch and epoch:
            return entry[1]
        tenant = Tenant.get_or_none((Tenant.id == name) | (Tenant.external_id == name))
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[name] = (epoch, tenant)
        return tenant


def _tenant_names() -> _TenantNames:
    names = current_app.extensions.get("tenant_names")
    if names is None:
        names = current_app.extensions["tenant_names"] = _TenantNames()
    return names


def acting_tenant(snapshot: KeySnapshot, named: str | None) -> Tenant:
    """The tenant a request acts in: the key's own, or (platform keys only) the one ``named``
    in the ``Switchboard-Tenant`` header; a 400 problem naming the header otherwise."""
    if named is None:
        return snapshot.tenant
    named = named.strip()
    if not snapshot.row.platform:
        raise Problem(
            400,
            f"`{TENANT_HEADER}` is for platform keys: a tenant's key always acts in its own "
            "tenant. Leave the header out.",
            errors={TENANT_HEADER: ["not accepted with a tenant key"]},
        )
    tenant = _tenant_names().find(named, snapshot.epoch) if 0 < len(named) <= 200 else None
    if tenant is None or tenant.status == "deleting":
        raise Problem(
            400,
            f"`{TENANT_HEADER}` names no tenant: {named[:200]!r} is neither a tenant id nor an "
            "external_id.",
            errors={TENANT_HEADER: ["no such tenant"]},
        )
    return tenant


def principal_of(snapshot: KeySnapshot, tenant: Tenant) -> Principal:
    """The principal a checked key snapshot stands for, acting in ``tenant``."""
    scopes = frozenset(snapshot.row.permissions or ())
    if snapshot.user is not None:  # a key never holds more than its owner's role allows
        scopes &= ROLE_SCOPES.get(snapshot.role or "", frozenset())
    return Principal(
        key=snapshot.row, user=snapshot.user, scopes=scopes, tenant=tenant, role=snapshot.role
    )


_last_touched: dict[str, float] = {}


def _touch_last_used(row: ApiKey) -> None:
    """Record use at most about once a minute per key and process (a conditional UPDATE)."""
    now_mono = time.monotonic()
    if now_mono - _last_touched.get(row.id, -1e9) < LAST_USED_RESOLUTION.total_seconds():
        return
    _last_touched[row.id] = now_mono
    now = utcnow()
    cutoff = now - LAST_USED_RESOLUTION
    try:
        ApiKey.update(last_used_at=now).where(
            (ApiKey.id == row.id) & (ApiKey.last_used_at.is_null() | (ApiKey.last_used_at < cutoff))
        ).execute()
    except peewee.OperationalError:  # a busy SQLite file must not fail the request
        log.warning("could not record last_used_at for %s", row.id)


def authenticate() -> Principal:
    """Authenticate and rate-limit this request once and return the principal.

    The hot path costs one Redis round trip and no database query: a key verified earlier in
    this process is reused while the auth epoch (read by the rate-limit script, or on its own
    when rate limiting is off) is unchanged.
    Raises 401/403 problems for bad keys, 429 over the key's rate limit, 503 when the rate
    limiter is down and configured to fail closed.
    """
    principal: Principal | None = g.get("principal")
    if principal is not None:
        return principal
    delegated = request.environ.get(DELEGATED_PRINCIPAL)
    if isinstance(delegated, Principal):  # set in-process only: no client can send it
        g.principal = delegated
        g.tenant_id = delegated.tenant_id
        return delegated
    raw = presented_key()
    if not raw:
        raise _unauthorized("An API key is required: send `Authorization: Bearer <key>`.")
    started = time.perf_counter()
    snapshot = _key_cache().snapshot(raw)
    counted = False
    if snapshot is not None:
        try:
            check_key(snapshot, raw)
        except Problem:
            snapshot = None  # perhaps stale: decide on the row as stored now
    if snapshot is not None:
        # Counted only while the auth epoch still matches the snapshot, so a secret that a
        # rotation or revocation has made wrong never spends the key's quota.
        decision = enforce_rate_limit(
            snapshot.row.id,
            snapshot.row.rate_limit,
            tenant_limit=_tenant_limit(snapshot),
            watch=AUTH_EPOCH,
            expect=snapshot.epoch,
        )
        counted = decision is None or decision.counted
        if decision is None:
            # Rate limiting off: read the epoch alone. (Failing open, Redis is down: reload.)
            limiting = current_app.config["RATELIMIT_ENABLED"]
            if limiting or _read_epoch(create=False) != snapshot.epoch:
                snapshot = None
        elif not decision.counted:
            snapshot = None  # the epoch moved: reload from the database
    if snapshot is None:
        snapshot = load_key(raw)
        check_key(snapshot, raw)
    g.key_verify_ms = (time.perf_counter() - started) * 1000
    tenant = acting_tenant(snapshot, request.headers.get(TENANT_HEADER))
    if not counted:
        enforce_rate_limit(
            snapshot.row.id, snapshot.row.rate_limit, tenant_limit=_tenant_limit(snapshot)
        )
    principal = principal_of(snapshot, tenant)
    g.principal = principal
    g.tenant_id = principal.tenant_id
    if g.get("usage") is not None:
        g.usage.tenant_id = principal.tenant_id
    _touch_last_used(snapshot.row)
    return principal


def _tenant_limit(snapshot: KeySnapshot) -> SharedLimit | None:
    """The ``requests_per_hour`` quota a tenant key counts against (operators' platform keys
    spend none of a tenant's)."""
    return None if snapshot.row.platform else requests_limit(snapshot.tenant)


def init_app(app: Flask) -> None:
    """Bind :func:`authenticate` as the authenticator ``Blueprint.auth`` calls."""
    app.extensions["authenticate"] = authenticate
