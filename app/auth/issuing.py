"""Issuing API keys: the one place that creates and rotates key secrets.

A secret made here is recorded as known-good at once (``known_good``): the service knows it is
right, so wrong secrets tried against the new prefix can never lock it out, even before its
first use.
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flask import current_app

from app.auth import known_good
from app.auth.access import ROLE_SCOPES, bump_auth_epoch
from app.auth.keys import check_secret, generate_key, hash_secret, key_prefix
from app.store.models import DEFAULT_TENANT_ID, ApiKey, Membership, User, new_id, utcnow


def new_secret(kind: str = "live") -> tuple[str, str]:
    """A new key secret and its bcrypt hash: slow, so made before any transaction opens."""
    secret = generate_key(kind)
    return secret, hash_secret(secret, current_app.config["BCRYPT_ROUNDS"])


def issue_key(
    *,
    name: str,
    owner: User | None,
    permissions: list[str],
    tenant_id: str,
    platform: bool = False,
    rate_limit: int = 1000,
    expires_at: datetime | None = None,
    allowed_ips: list[str] | None = None,
    kind: str = "live",
    prepared: tuple[str, str] | None = None,
) -> tuple[ApiKey, str]:
    """Create a key of ``tenant_id`` (with ``platform``: an operator's key, at home there) and
    return it with its secret (the only time the secret exists).

    ``prepared`` is a :func:`new_secret` made before the caller's transaction opened.
    """
    if platform and owner is not None and not owner.platform_admin:
        raise ValueError("only a platform admin may own a platform key")
    secret, hashed = prepared or new_secret(kind)
    row = ApiKey.create(
        tenant_id=tenant_id,
        platform=platform,
        name=name,
        key_prefix=key_prefix(secret),
        key_hash=hashed,
        permissions=sorted(set(permissions)),
        rate_limit=rate_limit,
        expires_at=expires_at,
        allowed_ips=allowed_ips or None,
        created_by=owner,
    )
    known_good.remember(secret, hashed)
    return row, secret


def issue_session_key(
    user: User,
    role: str,
    tenant_id: str,
    via: str,
    prepared: tuple[str, str] | None = None,
    *,
    platform: bool | None = None,
) -> tuple[ApiKey, dict[str, Any]]:
    """A session key of ``tenant_id`` (``LOGIN_KEY_TTL``, the scopes of the user's ``role``
    there; a platform key for platform admins unless ``platform`` is False) and the answer
    that shows it."""
    expires_at = utcnow() + timedelta(seconds=current_app.config["LOGIN_KEY_TTL"])
    scopes = sorted(ROLE_SCOPES[role])
    row, secret = issue_key(
        name=f"{via} session for {user.email}",
        owner=user,
        permissions=scopes,
        tenant_id=tenant_id,
        platform=bool(user.platform_admin) if platform is None else platform,
        expires_at=expires_at,
        kind="sess",
        prepared=prepared,
    )
    answer = {
        "key": secret,
        "key_id": row.id,
        "expires_at": expires_at,
        "scopes": scopes,
        "tenant_id": tenant_id,
        "platform": row.platform,
    }
    return row, answer


def rotate_key(row: ApiKey, grace_period_seconds: int, prepared: tuple[str, str]) -> str:
    """Give ``row`` the :func:`new_secret` ``prepared``; the old one works for the grace period."""
    secret, hashed = prepared
    if grace_period_seconds > 0:
        row.previous_key_prefix = row.key_prefix
        row.previous_key_hash = row.key_hash
        row.previous_valid_until = utcnow() + timedelta(seconds=grace_period_seconds)
    else:
        row.previous_key_prefix = row.previous_key_hash = row.previous_valid_until = None
    row.key_prefix = secret[: len(row.key_prefix)]
    row.key_hash = hashed
    row.save()
    known_good.remember(secret, hashed)
    return secret


def ensure_admin(email: str, password: str | None) -> tuple[User, str | None]:
    """Create the platform admin (operator) if missing, an admin of the default tenant too;
    return it and the password if one was generated."""
    email = email.strip().lower()
    user = User.get_or_none(User.email == email)
    generated = None
    if user is None:
        if password is None:
            password = generated = secrets.token_urlsafe(18)
        user = User.create(
            email=email,
            password_hash=hash_secret(password, current_app.config["BCRYPT_ROUNDS"]),
            platform_admin=True,
        )
    else:
        # An existing member or disabled account is promoted: the key printed must work as admin.
        if password is not None:
            user.password_hash = hash_secret(password, current_app.config["BCRYPT_ROUNDS"])
        user.platform_admin = True
        user.disabled = False
        user.save()
        bump_auth_epoch()  # cached keys of this user must see the new role
    Membership.insert(
        id=new_id("mem"), user=user.id, tenant_id=DEFAULT_TENANT_ID, role="admin"
    ).on_conflict(
        conflict_target=[Membership.user, Membership.tenant_id], update={Membership.role: "admin"}
    ).execute()
    return user, generated


def new_admin_key(user: User, name: str) -> str:
    """Issue a platform key with every scope for the platform admin ``user``, at home in the
    default tenant (where it acts unless it names another); return its secret."""
    _, secret = issue_key(
        name=name,
        owner=user,
        permissions=sorted(ROLE_SCOPES["admin"]),
        tenant_id=DEFAULT_TENANT_ID,
        platform=True,
    )
    return secret


DEV_KEY_NAME = "dev server key"


def dev_admin_key(user: User, stored: Path) -> str:
    """The development admin key kept in ``stored``: reused while it is live, else replaced.

    Restarting the dev server must not pile up never-expiring admin keys: the key is kept in
    the instance folder (mode 0600, like the development encryption key next to it) and
    printed again on every start. When it is gone, revoked, expired or from another database,
    a new one is issued and every other live dev key of ``user`` is revoked.
    """
    secret = stored.read_text().strip() if stored.exists() else ""
    row = (
        ApiKey.get_of(DEFAULT_TENANT_ID, ApiKey.key_prefix == key_prefix(secret))
        if secret
        else None
    )
    now = utcnow()
    if (
        row is not None
        and row.created_by_id == user.id
        and row.revoked_at is None
        and row.platform
        and (row.expires_at is None or row.expires_at > now)
        and "admin" in row.permissions
        and check_secret(secret, row.key_hash)
    ):
        return secret
    revoked = (
        ApiKey.update_of(DEFAULT_TENANT_ID, revoked_at=now)
        .where(
            (ApiKey.created_by == user)
            & (ApiKey.name == DEV_KEY_NAME)
            & ApiKey.revoked_at.is_null()
        )
        .execute()
    )
    if revoked:
        bump_auth_epoch()
    secret = new_admin_key(user, DEV_KEY_NAME)
    stored.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(stored, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret + "\n")
    return secret
