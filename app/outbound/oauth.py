"""authlib's OAuth2 client over the SSRF-guarded transport, and how its failures are classed.

Token, revocation, discovery and JWKS calls leave through ``outbound.guard``'s adapter like
every other outbound call; errors are sorted into "the grant is dead, reconnect"
(:class:`GrantRefused`) and "try again later" (:class:`ProviderUnavailable`). Messages carry
the provider's error code and description, never a token.
"""

from __future__ import annotations

from typing import Any

import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError

from app.outbound.guard import BlockedDestination, GuardedAdapter
from app.outbound.session import USER_AGENT, allowed_networks

#: Provider error codes after which retrying the same grant cannot succeed (RFC 6749 §5.2).
PERMANENT_ERRORS = frozenset(
    {"invalid_grant", "invalid_client", "unauthorized_client", "unsupported_grant_type"}
)
MAX_DESCRIPTION = 300


class ProviderError(Exception):
    """A call to the provider failed; ``message`` is safe to show and log."""

    def __init__(self, message: str, *, error: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error = error


class GrantRefused(ProviderError):
    """The provider refused the grant or the client for good (``invalid_grant``, …)."""


class ProviderUnavailable(ProviderError):
    """A transient failure: network, timeout, 5xx, ``temporarily_unavailable``."""


def oauth_session(
    *,
    client_id: str,
    client_secret: str | None,
    timeout: float,
    auth_method: str | None = None,
    **kwargs: Any,
) -> OAuth2Session:
    """An authlib ``OAuth2Session`` whose every connection passes the SSRF guard."""
    session = OAuth2Session(
        client_id=client_id,
        client_secret=client_secret,
        token_endpoint_auth_method=auth_method,
        revocation_endpoint_auth_method=auth_method,
        code_challenge_method="S256",
        default_timeout=timeout,
        **kwargs,
    )
    session.trust_env = False  # no proxies from the environment: the guard must see the target
    session.headers["User-Agent"] = USER_AGENT
    adapter = GuardedAdapter(allowed_networks())
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def describe(exc: Exception, what: str) -> ProviderError:
    """Turn what a provider call raised into a :class:`ProviderError` subclass."""
    if isinstance(exc, OAuthError):
        code = str(exc.error or "error")
        description = _clip(getattr(exc, "description", None))
        message = f"{what}: the provider answered {code}" + (
            f" ({description})" if description else ""
        )
        kind = GrantRefused if code in PERMANENT_ERRORS else ProviderUnavailable
        return kind(message, error=code)
    if isinstance(exc, BlockedDestination):
        reason = str(exc).rsplit(": ", 1)[-1]
        return GrantRefused(f"{what}: refused by the SSRF guard ({reason})", error="blocked")
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        kind = ProviderUnavailable if status >= 500 or status == 429 else GrantRefused
        return kind(f"{what}: the provider answered HTTP {status}", error=f"http_{status}")
    if isinstance(exc, requests.RequestException):
        return ProviderUnavailable(
            f"{what}: the provider could not be reached ({type(exc).__name__})"
        )
    if isinstance(exc, ValueError):  # authlib: the token response is not a JSON object
        return GrantRefused(f"{what}: the provider's answer is not a token response")
    return ProviderUnavailable(f"{what}: failed ({type(exc).__name__})")


def _clip(text: Any) -> str:
    value = " ".join(str(text or "").split())
    return value[:MAX_DESCRIPTION]
