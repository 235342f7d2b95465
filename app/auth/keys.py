"""API key secrets: generation, bcrypt storage, and verification with an in-process cache.

A key looks like ``sb_live_`` + 40 base62 characters (≈238 bits). Its first 16 characters are
the display prefix that finds the row; the whole key is bcrypt-hashed. bcrypt is slow on
purpose, so a successful verification is cached for ``KEY_CACHE_TTL`` seconds under a SHA-256
of the key; revocation and expiry are still read from the row on every request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import string
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import bcrypt

from app.web.serving import off_the_loop

KEY_TYPES = ("live", "sess")
PREFIX_LENGTH = 16
_ALPHABET = string.ascii_letters + string.digits
_KEY_RE = re.compile(r"^sb_(live|sess)_[A-Za-z0-9]{40}$")


def generate_key(kind: str = "live") -> str:
    """Return a new random key secret of the given type."""
    if kind not in KEY_TYPES:
        raise ValueError(f"unknown key type {kind!r}")
    return f"sb_{kind}_" + "".join(secrets.choice(_ALPHABET) for _ in range(40))


def key_prefix(key: str) -> str | None:
    """The display prefix of a well-formed key, or None if the key is malformed."""
    return key[:PREFIX_LENGTH] if _KEY_RE.match(key) else None


def _bcrypt_input(secret: str) -> bytes:
    """What bcrypt hashes: the secret's UTF-8 bytes, or for a secret over bcrypt's 72-byte limit
    (a long or non-ASCII password; keys are always shorter) the base64 of its SHA-256, as
    Django's BCryptSHA256 does, so no byte of it is silently ignored."""
    encoded = secret.encode()
    if len(encoded) <= 72:
        return encoded
    return base64.b64encode(hashlib.sha256(encoded).digest())


def hash_secret(secret: str, rounds: int) -> str:
    """bcrypt-hash a key or password."""
    return off_the_loop(bcrypt.hashpw, _bcrypt_input(secret), bcrypt.gensalt(rounds)).decode()


def check_secret(secret: str, hashed: str) -> bool:
    """Constant-time bcrypt check; False for malformed hashes."""
    try:
        return off_the_loop(bcrypt.checkpw, _bcrypt_input(secret), hashed.encode())
    except ValueError:
        return False


@dataclass(frozen=True)
class KeySnapshot:
    """A verified key row, its tenant, its owner and the owner's role there, as loaded at
    ``epoch`` (see ``access.AUTH_EPOCH``)."""

    row: Any
    user: Any
    epoch: str
    tenant: Any
    role: str | None


class VerifiedKeyCache:
    """Per-process memory of verified keys, keyed by a SHA-256 of the presented secret.

    Two things are remembered for ``ttl`` seconds: that bcrypt accepted the key against a
    given stored hash (so bcrypt runs once per key, not per request), and optionally a
    snapshot of the key's row and owner, valid while the shared auth epoch is unchanged.
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[str, float, KeySnapshot | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._flights: dict[bytes, threading.Lock] = {}  # a bcrypt check under way, per key

    @staticmethod
    def _digest(key: str) -> bytes:
        return hashlib.sha256(key.encode()).digest()

    def snapshot(self, key: str) -> KeySnapshot | None:
        """The remembered row snapshot of ``key``, if fresh."""
        with self._lock:
            entry = self._entries.get(self._digest(key))
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[2]

    def remember(self, key: str, snapshot: KeySnapshot) -> None:
        """Keep ``snapshot`` for ``key`` (whose hash bcrypt already accepted)."""
        digest = self._digest(key)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None:
                self._entries[digest] = (entry[0], entry[1], snapshot)

    def verified(self, key: str, hashed: str) -> bool:
        """True when bcrypt accepted ``key`` against ``hashed`` recently (no bcrypt now)."""
        with self._lock:
            entry = self._entries.get(self._digest(key))
        return (
            entry is not None
            and entry[1] > time.monotonic()
            and hmac.compare_digest(entry[0], hashed)
        )

    def accept(self, key: str, hashed: str) -> None:
        """Remember that ``key`` matches ``hashed`` (checked by bcrypt here or elsewhere)."""
        digest = self._digest(key)
        with self._lock:
            self._entries[digest] = (hashed, time.monotonic() + self.ttl, None)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def verify(self, key: str, hashed: str) -> bool:
        """True when ``key`` matches ``hashed``; bcrypt runs only on a cache miss.

        Threads that present the same uncached key at once wait for one bcrypt check instead
        of each running their own (a cold key under load would otherwise cost a check per
        connection, ~250 ms of CPU each).
        """
        if self.verified(key, hashed):
            return True
        digest = self._digest(key)
        with self._lock:
            flight = self._flights.setdefault(digest, threading.Lock())
        try:
            with flight:
                if self.verified(key, hashed):  # checked by the thread we waited for
                    return True
                if not check_secret(key, hashed):
                    return False
                self.accept(key, hashed)
                return True
        finally:
            with self._lock:
                if self._flights.get(digest) is flight:
                    del self._flights[digest]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
