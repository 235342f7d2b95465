"""``/portal``: a tenant's own webhook pages, opened by a single-use portal-session link.

Each view calls the REST API as the session (``Seat.api``); a read-only session is refused
before anything is called, and again by the API, which gives it no write scope.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, redirect, request, url_for
from flask.typing import ResponseReturnValue

from app.console import webhook_pages as forms
from app.console.pages import (
    PageRefused,
    Seat,
    portal_frame_ancestors,
    portal_principal,
    refused_page,
    security_headers,
)
from app.console.sessions import LinkRefused, redeem_link, session_for_cookie
from app.console.webhook_pages import add_webhook_pages
from app.store.models import Tenant, utcnow

COOKIE = "sb_portal"
bp = Blueprint(
    "portal",
    __name__,
    url_prefix="/portal",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
_OPEN = {"portal.start", "portal.static"}


@bp.before_request
def _load_seat() -> None:
    if request.endpoint in _OPEN:
        return
    row = session_for_cookie(request.cookies.get(COOKIE), "portal")
    if row is None:
        raise PageRefused(
            401,
            "Session ended",
            "Your portal session has ended or was never opened in this browser. Open the "
            "portal again from the application that sent you here.",
        )
    tenant = Tenant.get_or_none(Tenant.id == row.tenant_id)
    if tenant is None or tenant.status != "active":
        raise PageRefused(403, "Unavailable", "This account's portal is not available now.")
    theme = {**(tenant.settings or {}).get("portal_theme", {}), **(row.theme or {})}
    seat = Seat(
        row,
        tenant,
        portal_principal(row, tenant),
        request.cookies[COOKIE],
        "portal",
        theme=theme,
    )
    g.seat = seat
    forms.check_write(seat)


@bp.errorhandler(PageRefused)
def _refused(exc: PageRefused) -> Response:
    return refused_page(exc, "portal/layout.html")


@bp.after_request
def _headers(response: Response) -> Response:
    return security_headers(response, portal_frame_ancestors())


@bp.route("/start")
def start() -> ResponseReturnValue:
    """Redeem a portal link: set the session cookie and open the endpoints page."""
    try:
        row, cookie = redeem_link(request.args.get("token", ""))
    except LinkRefused as exc:
        raise PageRefused(403, "This link cannot be used", str(exc)) from exc

    response = redirect(url_for("portal.endpoints"))
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int((row.expires_at - utcnow()).total_seconds()),
        path="/portal",
        secure=request.is_secure,
        httponly=True,
        samesite=current_app.config["PORTAL_COOKIE_SAMESITE"].capitalize(),
    )
    return response


@bp.route("/")
def home() -> ResponseReturnValue:
    return redirect(url_for("portal.endpoints"))


@bp.route("/theme.css")
def theme_css() -> Response:
    """The session's accent colour as a stylesheet (inline styles are refused by the CSP)."""
    accent = g.seat.theme.get("accent") or "#2457c5"
    css = f":root {{ --accent: {accent}; }}\n" if forms.is_colour(accent) else ""
    return Response(css, mimetype="text/css")


add_webhook_pages(bp)
