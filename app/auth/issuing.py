"""Issuing API keys: the one place that creates and rotates key secrets."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from flask import current_app

from app.auth.access import ROLE_SCOPES, bump_auth_epoch
from app.auth.keys import generate_key, hash_secret, key_prefix
from app.store.models import ApiKey, User, utcnow


def issue_key(
    *,
    name: str,
    owner: User | None,
    permissions: list[str],
    rate_limit: int = 1000,
    expires_at: datetime | None = None,
    allowed_ips: list[str] | None = None,
    kind: str = "live",
) -> tuple[ApiKey, str]:
    """Create a key row and return it with its secret (the only time the secret exists)."""
    secret = generate_key(kind)
    row = ApiKey.create(
        name=name,
        key_prefix=key_prefix(secret),
        key_hash=hash_secret(secret, current_app.config["BCRYPT_ROUNDS"]),
        permissions=sorted(set(permissions)),
        rate_limit=rate_limit,
        expires_at=expires_at,
        allowed_ips=allowed_ips or None,
        created_by=owner,
    )
    return row, secret


def rotate_key(row: ApiKey, grace_period_seconds: int) -> str:
    """Give ``row`` a new secret; the old one keeps working for the grace period."""
    secret = generate_key(row.key_prefix[3:7])
    if grace_period_seconds > 0:
        row.previous_key_prefix = row.key_prefix
        row.previous_key_hash = row.key_hash
        row.previous_valid_until = utcnow() + timedelta(seconds=grace_period_seconds)
    else:
        row.previous_key_prefix = row.previous_key_hash = row.previous_valid_until = None
    row.key_prefix = secret[: len(row.key_prefix)]
    row.key_hash = hash_secret(secret, current_app.config["BCRYPT_ROUNDS"])
    row.save()
    return secret


def ensure_admin(email: str, password: str | None) -> tuple[User, str | None]:
    """Create the admin user if missing; return it and the password if one was generated."""
    email = email.strip().lower()
    user = User.get_or_none(User.email == email)
    generated = None
    if user is None:
        if password is None:
            password = generated = secrets.token_urlsafe(18)
        user = User.create(
            email=email,
            password_hash=hash_secret(password, current_app.config["BCRYPT_ROUNDS"]),
            role="admin",
        )
    else:
        # An existing member or disabled account is promoted: the key printed must work as admin.
        if password is not None:
            user.password_hash = hash_secret(password, current_app.config["BCRYPT_ROUNDS"])
        user.role = "admin"
        user.disabled = False
        user.save()
        bump_auth_epoch()  # cached keys of this user must see the new role
    return user, generated


def new_admin_key(user: User, name: str) -> str:
    """Issue an admin-scoped key for ``user`` and return its secret."""
    _, secret = issue_key(name=name, owner=user, permissions=sorted(ROLE_SCOPES["admin"]))
    return secret
