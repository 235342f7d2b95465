"""Binding a browser flow (SSO login, OAuth connect) to the browser that started it.

The starting page sets a random value in an HttpOnly cookie scoped to the flow's callback path;
the flow's state keeps only its SHA-256. A flow started through the API (an OAuth connection,
linking one's own SSO identity) hands out a single-use start link (``/api/v1/oauth/start``)
instead of the provider's URL: the browser that opens it gets the cookie and goes on to the
provider. The callback must bring the cookie back, so nobody can
make a victim's browser finish their own flow (login CSRF), and whoever opens a leaked
provider URL in another browser is refused. ``SameSite=Lax``: the provider's redirect back is a
top-level navigation, on which Lax cookies are sent.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlencode

from flask import Response, current_app, request

from app.oauth import states
from app.oauth.pages import redirect_to
from app.web.problems import Problem

COOKIE = "sb_oauth_binding"
START_FLOW = "browser-start"
START_PATH = "/api/v1/oauth/start"


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
        max_age=states.STATE_TTL_SECONDS,
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


def start_link(provider_url: str, value: str, callback_path: str) -> str:
    """A single-use link that binds the browser opening it (``value``) and goes on to
    ``provider_url``; the flow's callback is at ``callback_path``."""
    ticket, _ = states.issue(
        START_FLOW, {"url": provider_url, "binding": value, "path": callback_path}
    )
    return current_app.config["PUBLIC_URL"] + START_PATH + "?" + urlencode({"ticket": ticket})


def open_start_link(ticket: str | None) -> Response:
    """Open a :func:`start_link` (once): set the cookie, redirect to the provider."""
    data = states.take(START_FLOW, ticket)
    if data is None:
        raise Problem(
            400,
            "This link is unknown, expired or already used: start again.",
            errors={"ticket": ["unknown, expired or already used"]},
        )
    response = redirect_to(data["url"])
    attach(response, data["binding"], data["path"])
    return response
