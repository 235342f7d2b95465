"""Password login: constant-shape answers whether or not the email exists."""

from __future__ import annotations

import functools

from flask import current_app

from app.auth.keys import check_secret, hash_secret
from app.store.models import User


@functools.cache
def _dummy_hash(rounds: int) -> str:
    return hash_secret("switchboard-timing-equaliser", rounds)


def authenticate_user(email: str, password: str) -> User | None:
    """Return the enabled user whose password matches, else None — always paying one bcrypt."""
    user = User.get_or_none(User.email == email.strip().lower())
    # Users created by SSO have no password ("") until one is set: same answer as no user.
    if user is None or user.disabled or not user.password_hash:
        check_secret(password, _dummy_hash(current_app.config["BCRYPT_ROUNDS"]))
        return None
    return user if check_secret(password, user.password_hash) else None
