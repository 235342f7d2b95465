"""What every ``/portal`` and ``/console`` page shares: the session behind the cookie, its
principal, CSRF checks, security headers and rendering."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import Response, current_app, g, make_response, render_template, request, url_for

from app.auth.access import ROLE_SCOPES, Principal
from app.console.delegate import Answer, call_api
from app.console.sessions import csrf_matches, csrf_token
from app.limits.enforce import enforce as enforce_rate_limit
from app.limits.quotas import requests_limit
from app.store.models import ApiKey, ConsoleSession, Tenant, User
from app.web.problems import Problem

#: What a portal session may do in its tenant (read-only sessions: the reads alone).
PORTAL_READ_SCOPES = frozenset({"webhooks:read", "integrations:read", "logs:read"})
PORTAL_WRITE_SCOPES = PORTAL_READ_SCOPES | {"webhooks:write", "events:write"}
#: A session's key stand-in: its page views count against this per-hour limit like a key's
#: requests (the Live page alone asks every two seconds: 1800 an hour).
SESSION_RATE_LIMIT = 7200


class PageRefused(Exception):
    """A page that cannot be shown to this browser; rendered as a plain error page."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


@dataclass
class Seat:
    """The signed-in browser: its session, the tenant it acts in and what it may do."""

    session: ConsoleSession
    tenant: Tenant
    principal: Principal
    cookie: str
    kind: str
    user: User | None = None
    theme: dict[str, Any] = field(default_factory=dict)
    acting: str | None = None  # console: the tenant picked with ?tenant= (platform admins)

    @property
    def layout(self) -> str:
        return f"{self.kind}/layout.html"

    def url(self, view: str, **values: Any) -> str:
        """The URL of ``view`` in this seat's area, keeping the picked tenant."""
        if self.acting:
            values.setdefault("tenant", self.acting)
        return url_for(f"{self.kind}.{view}", **values)

    @property
    def read_only(self) -> bool:
        return not self.principal.has("webhooks:write")

    @property
    def csrf(self) -> str:
        return csrf_token(self.cookie)

    def switchable_tenants(self) -> list[dict[str, Any]]:
        """The tenants an operator can switch the console to (none for anyone else)."""
        if self.kind != "console" or not self.principal.platform:
            return []
        answer = self.api("GET", "/tenants", query={"limit": 100})
        return list(answer.body["items"]) if answer.ok else []

    def api(self, method: str, path: str, **kwargs: Any) -> Answer:
        """Call the REST API as this seat (see ``app.console.delegate``)."""
        return call_api(self.principal, method, path, **kwargs)


def session_principal(
    session: ConsoleSession,
    tenant: Tenant,
    scopes: frozenset[str],
    *,
    user: User | None = None,
    role: str | None = None,
    platform: bool = False,
) -> Principal:
    """The principal a console session acts as: a key stand-in (never stored) whose id is the
    session's, so audit entries name the session that acted."""
    key = ApiKey(
        id=session.id,
        tenant_id=session.tenant_id,
        name=f"{session.kind} session",
        key_prefix="",
        permissions=sorted(scopes),
        rate_limit=SESSION_RATE_LIMIT,
        platform=platform,
    )
    return Principal(key=key, user=user, scopes=scopes, tenant=tenant, role=role)


def portal_principal(session: ConsoleSession, tenant: Tenant) -> Principal:
    scopes = PORTAL_READ_SCOPES if session.read_only else PORTAL_WRITE_SCOPES
    return session_principal(session, tenant, scopes)


def user_principal(session: ConsoleSession, tenant: Tenant, user: User, role: str) -> Principal:
    return session_principal(
        session, tenant, ROLE_SCOPES[role], user=user, role=role, platform=user.platform_admin
    )


def count_request(seat: Seat) -> None:
    """Count a page view against the session's rate limit and its tenant's hourly quota (an
    operator's, like a platform key's, spends none of the tenant's)."""
    tenant_limit = None if seat.principal.platform else requests_limit(seat.tenant)
    try:
        enforce_rate_limit(seat.session.id, SESSION_RATE_LIMIT, tenant_limit=tenant_limit)
    except Problem as exc:
        if exc.code == 429:
            raise PageRefused(
                429, "Slow down", "Too many requests from this session: wait a minute and retry."
            ) from exc
        raise PageRefused(503, "Unavailable", str(exc.description)) from exc


def check_csrf(seat: Seat) -> None:
    """Refuse a state change whose form lacks the session's CSRF token."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token")
    if not csrf_matches(seat.cookie, sent):
        raise PageRefused(
            403,
            "Form expired",
            "This form could not be verified (it may be from an old page). Reload the page "
            "and try again.",
        )


def security_headers(response: Response, frame_ancestors: str) -> Response:
    """A strict CSP (own scripts and styles only, no inline code, no eval) and friends."""
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https: data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; "
        f"frame-ancestors {frame_ancestors}"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def portal_frame_ancestors() -> str:
    allowed = current_app.config["PORTAL_FRAME_ANCESTORS"]
    return " ".join(allowed) if allowed else "'none'"


def render(template: str, status: int = 200, **context: Any) -> Response:
    """A page of the current seat (``g.seat``, if any), rendered with its layout."""
    seat: Seat | None = g.get("seat")
    body = render_template(template, seat=seat, **context)
    return make_response(body, status)


def refused_page(exc: PageRefused, layout: str) -> Response:
    return render(
        "console/refused.html", exc.status, title=exc.title, message=exc.message, layout=layout
    )
