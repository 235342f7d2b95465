"""Secrets at rest: MultiFernet with keys from ``SWITCHBOARD_SECRET_KEYS``.

The first key encrypts; every key decrypts, so keys rotate by prepending a new one and
re-encrypting with ``rotate``. In development, when no key is configured, one is generated
once and kept in ``instance/secret.key`` (mode 0600).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import Flask, current_app

__all__ = ["InvalidToken", "decrypt", "encrypt", "init_app", "rotate"]


def _development_key(instance_path: str) -> bytes:
    path = Path(instance_path) / "secret.key"
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


def init_app(app: Flask) -> None:
    """Build the MultiFernet for this app from its configured (or development) keys."""
    keys = [k.encode() for k in app.config["SECRET_KEYS"]] or [_development_key(app.instance_path)]
    app.extensions["secretbox"] = MultiFernet([Fernet(k) for k in keys])


def _box() -> MultiFernet:
    box: MultiFernet = current_app.extensions["secretbox"]
    return box


def encrypt(plaintext: str) -> str:
    """Encrypt a secret for storage."""
    return _box().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    """Decrypt a stored secret; raises ``InvalidToken`` if no configured key opens it."""
    return _box().decrypt(token.encode()).decode()


def rotate(token: str) -> str:
    """Re-encrypt a stored secret under the current primary key."""
    return _box().rotate(token.encode()).decode()
