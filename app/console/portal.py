"""``/portal``: a tenant's own webhook pages, opened by a single-use portal-session link.

Each view calls the REST API as the session (``Seat.api``); a read-only session is refused
before anything is called, and again by the API, which gives it no write scope.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, Response, g, redirect, request, url_for
from flask.typing import ResponseReturnValue

from app.console import live
from app.console import webhook_pages as forms
from app.console.charts import endpoint_health
from app.console.pages import (
    PageRefused,
    Seat,
    portal_frame_ancestors,
    portal_principal,
    refused_page,
    render,
    security_headers,
)
from app.console.sessions import LinkRefused, redeem_link, session_for_cookie
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
    from flask import current_app

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


@bp.route("/endpoints")
def endpoints() -> ResponseReturnValue:
    return forms.endpoint_list(g.seat, "portal")


@bp.route("/endpoints/new", methods=["GET", "POST"])
def new_endpoint() -> ResponseReturnValue:
    return forms.endpoint_create(g.seat, "portal")


@bp.route("/endpoints/<webhook_id>", methods=["GET", "POST"])
def endpoint(webhook_id: str) -> ResponseReturnValue:
    return forms.endpoint_detail(g.seat, "portal", webhook_id)


@bp.route("/endpoints/<webhook_id>/<action>", methods=["GET", "POST"])
def endpoint_action(webhook_id: str, action: str) -> ResponseReturnValue:
    return forms.endpoint_action(g.seat, "portal", webhook_id, action)


@bp.route("/deliveries")
def deliveries() -> ResponseReturnValue:
    return forms.delivery_list(g.seat, "portal")


@bp.route("/deliveries/<delivery_id>/resend", methods=["POST"])
def resend(delivery_id: str) -> ResponseReturnValue:
    return forms.delivery_resend(g.seat, "portal", delivery_id)


@bp.route("/test-event", methods=["GET", "POST"])
def test_event() -> ResponseReturnValue:
    return forms.send_test_event(g.seat, "portal")


@bp.route("/live")
def live_page() -> ResponseReturnValue:
    return render("portal/live.html", after=live.latest_id(), section="live")


@bp.route("/live/feed")
def live_feed() -> ResponseReturnValue:
    rows, after = live.deliveries_after(g.seat.tenant.id, request.args.get("after", ""))
    return render("portal/live_rows.html", rows=rows, after=after)


@bp.route("/health")
def health() -> ResponseReturnValue:
    window = request.args.get("window", "24h")
    span = timedelta(days=7) if window == "7d" else timedelta(hours=24)
    charts = endpoint_health(g.seat, span)
    return render("portal/health.html", charts=charts, window=window, section="health")
