"""PKCE (RFC 7636): a code verifier per authorization request and its S256 challenge."""

from __future__ import annotations

from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge

#: 64 characters of [A-Za-z0-9]: ≈381 bits, inside RFC 7636's 43–128 character range.
VERIFIER_LENGTH = 64


def new_code_verifier() -> str:
    """A fresh, high-entropy code verifier."""
    return generate_token(VERIFIER_LENGTH)


def code_challenge(verifier: str) -> str:
    """The S256 challenge of ``verifier``: BASE64URL(SHA256(verifier)) without padding."""
    return create_s256_code_challenge(verifier)
