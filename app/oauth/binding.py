"""Binding a browser flow (SSO login, OAuth connect) to the browser that started it.

The starting page sets a random value in an HttpOnly cookie scoped to the flow's callback path;
the flow's state keeps only its SHA-256. The callback must bring the cookie back, so nobody can
make a victim's browser finish their own flow (login CSRF), and whoever opens a leaked
provider URL in another browser is refused. ``SameSite=Lax``: the provider's redirect back is a
top-level navigation, on which Lax cookies are sent.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from flask import Response, current_app, request

from app.oauth.states import STATE_TTL_SECONDS

COOKIE = "sb_oauth_binding"


def digest(value: str) -> str:
    """What the state keeps of a binding value."""
    return hashlib.sha256(value.encode()).hexdigest()


def new_binding() -> tuple[str, str]:
    """A fresh binding value (for the cookie) and its digest (for the state)."""
    value = secrets.token_urlsafe(24)
    return value, digest(value)


def attach(response: Response, value: str, path: str) -> None:
    """Set the binding cookie on ``response``, sent back only to ``path`` (the callback)."""
    response.set_cookie(
        COOKIE,
        value,
        max_age=STATE_TTL_SECONDS,
        path=path,
        secure=current_app.config["PUBLIC_URL"].startswith("https://"),
        httponly=True,
        samesite="Lax",
    )


def matches(expected: str) -> bool:
    """True when this request brings the cookie whose digest is ``expected``."""
    return hmac.compare_digest(expected, digest(request.cookies.get(COOKIE, "")))


def clear(response: Response, path: str) -> Response:
    """Delete the binding cookie (the flow is over, either way)."""
    response.delete_cookie(COOKIE, path=path)
    return response
