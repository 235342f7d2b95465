"""ID token validation (OpenID Connect Core §3.1.3.7) with joserfc.

Checked, in order: the algorithm is asymmetric and offered by the provider; the signing key is
in the provider's JWKS (an unknown ``kid`` refetches the JWKS once — key rotation — and is then
refused); the signature; ``iss`` equals the discovered issuer; ``aud`` contains the client id;
``exp`` is in the future and ``iat`` present (60 s leeway for clock skew); ``nonce`` equals the
one sent with this login; ``azp``, when present, is the client id, and is required when ``aud``
names other audiences too. Symmetric (``HS*``) and ``none`` tokens are refused.
"""

from __future__ import annotations

from typing import Any

from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact

from app.oauth.discovery import signing_keys

ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
LEEWAY_SECONDS = 60


class InvalidIdToken(Exception):
    """The ID token must not be trusted; ``reason`` says why (safe to show, no token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _header(id_token: str) -> dict[str, Any]:
    try:
        return dict(extract_compact(id_token.encode()).headers())
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidIdToken("the ID token is not a signed JWT") from exc


def _key(keys: KeySet, kid: Any) -> Any:
    try:
        return keys.get_by_kid(kid if isinstance(kid, str) else None)
    except JoseError:
        return None


def verify_id_token(
    id_token: str, *, metadata: dict[str, Any], client_id: str, nonce: str, timeout: float
) -> dict[str, Any]:
    """The ID token's claims if it passes every check above, else ``InvalidIdToken``."""
    header = _header(id_token)
    algorithm = header.get("alg")
    offered = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
    if algorithm not in ASYMMETRIC_ALGORITHMS or algorithm not in offered:
        raise InvalidIdToken(f"the ID token's algorithm {str(algorithm)[:20]!r} is not accepted")
    jwks_uri = metadata["jwks_uri"]
    key = _key(signing_keys(jwks_uri, timeout), header.get("kid"))
    if key is None:  # the provider may have rotated its keys since we cached them
        key = _key(signing_keys(jwks_uri, timeout, refresh=True), header.get("kid"))
    if key is None:
        raise InvalidIdToken("the ID token is signed with a key the provider does not publish")
    try:
        claims = jwt.decode(id_token, key, algorithms=[algorithm]).claims
    except BadSignatureError as exc:
        raise InvalidIdToken("the ID token's signature is invalid") from exc
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidIdToken("the ID token could not be verified") from exc
    registry = jwt.JWTClaimsRegistry(
        leeway=LEEWAY_SECONDS,
        iss={"essential": True, "value": metadata["issuer"]},
        aud={"essential": True, "value": client_id},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True, "value": nonce},
    )
    try:
        registry.validate(claims)
    except ExpiredTokenError as exc:
        raise InvalidIdToken("the ID token has expired") from exc
    except MissingClaimError as exc:
        raise InvalidIdToken(f"the ID token is incomplete: {exc.description}") from exc
    except InvalidClaimError as exc:
        raise InvalidIdToken(f"the ID token's {exc.claim} claim is wrong") from exc
    except JoseError as exc:
        raise InvalidIdToken("the ID token's claims are invalid") from exc
    _check_azp(claims, client_id)
    return dict(claims)


def _check_azp(claims: dict[str, Any], client_id: str) -> None:
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    azp = claims.get("azp")
    if azp is not None and azp != client_id:
        raise InvalidIdToken("the ID token's azp claim is not this client")
    if azp is None and len(audiences) > 1:
        raise InvalidIdToken("the ID token names several audiences but no azp")
