"""``/console``: platform admins and tenant admins, signed in with their password.

Tabs: Overview, SSO, Webhooks (the portal's pages, with a tenant switcher for operators),
Multi-Tenancy (operators only) and API Gateway. Like the portal, every view acts through the
REST API as the signed-in user, with the role the user holds in the tenant shown.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, g, redirect, request, url_for
from flask.typing import ResponseReturnValue

from app.audit import record_audit
from app.auth.access import check_key, client_ip, load_key, role_of
from app.auth.passwords import authenticate_user
from app.auth.throttle import give_back, refuse_or_take_slot
from app.console import tabs
from app.console.pages import (
    PageRefused,
    Seat,
    check_csrf,
    refused_page,
    render,
    security_headers,
    user_principal,
)
from app.console.sessions import (
    end_session,
    open_console_session,
    revoke_key,
    session_for_cookie,
)
from app.console.webhook_pages import add_webhook_pages, check_write
from app.oauth.sso import discover
from app.store.db import database
from app.store.models import Membership, User
from app.tenants.directory import choose_seat, find_tenant
from app.web.problems import Problem

COOKIE = "sb_console"
SESSION_LIFETIME = timedelta(hours=8)
bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
_OPEN = {"console.login", "console.static", "console.sso_start", "console.sso_return"}


def _console_role(user: User, tenant_id: str) -> str | None:
    membership = Membership.get_of(tenant_id, Membership.user == user.id)
    return role_of(user, membership)


@bp.before_request
def _load_seat() -> ResponseReturnValue | None:
    if request.endpoint in _OPEN:
        return None
    row = session_for_cookie(request.cookies.get(COOKIE), "console")
    user = User.get_or_none(User.id == row.user_id) if row is not None else None
    if row is None or user is None or user.disabled:
        return redirect(url_for("console.login", next=request.full_path), 303)
    home = find_tenant(row.tenant_id)
    acting = request.args.get("tenant") if user.platform_admin else None
    tenant = find_tenant(acting) if acting else home
    if tenant is None:
        raise PageRefused(404, "No such tenant", f"There is no tenant {acting!r}.")
    role = _console_role(user, tenant.id)
    if role != "admin":
        raise PageRefused(403, "Admins only", "The console is for admins of a tenant.")
    seat = Seat(
        row,
        tenant,
        user_principal(row, tenant, user, role),
        request.cookies[COOKIE],
        "console",
        user=user,
        acting=acting,
    )
    g.seat = seat
    check_write(seat)
    return None


@bp.errorhandler(PageRefused)
def _refused(exc: PageRefused) -> Response:
    return refused_page(exc, "console/layout.html")


@bp.after_request
def _headers(response: Response) -> Response:
    return security_headers(response, "'none'")


def _same_origin() -> bool:
    """A sign-in form posted from this origin (browsers send Origin on every POST)."""
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """Sign in with email and password (admins of a tenant, or platform admins)."""
    target = request.args.get("next") or url_for("console.overview")
    if not target.startswith("/console"):
        target = url_for("console.overview")
    if request.method == "GET":
        return render("console/login.html", next=target, email="")
    email = request.form.get("email", "").strip().lower()
    if not _same_origin():
        raise PageRefused(403, "Not allowed", "Sign in from this site's own sign-in page.")
    try:
        idents = {"email": email, "ip": client_ip()}
        refuse_or_take_slot(**idents)  # before bcrypt, as the API's login does
        user = authenticate_user(email, request.form.get("password", ""))
        if user is None:
            raise Problem(401, "Wrong email or password.")  # the slot stays taken: a failure
        give_back(**idents)
        seat, _ = choose_seat(user, None)
        if role_of(user, Membership.get_of(seat.tenant.id, Membership.user == user.id)) != "admin":
            raise Problem(403, "The console is for admins; your role here is not admin.")
    except Problem as exc:
        return render(
            "console/login.html", exc.code or 400, next=target, email=email, problem=exc.description
        )
    with database.atomic():
        row, cookie = open_console_session(seat.tenant.id, user.id, SESSION_LIFETIME)
        record_audit(
            "console.login",
            "console_session",
            row.id,
            {"user": user.email},
            tenant_id=seat.tenant.id,
            actor_user_id=user.id,
        )
    return _signed_in(target, cookie)


@bp.route("/sso-start")
def sso_start() -> ResponseReturnValue:
    """Sign in with SSO: find the email's SSO integration and go through its login, which
    comes back to ``sso_return`` with a session key in the URL fragment."""
    email = request.args.get("email", "").strip()
    try:
        found = discover(email)
    except Problem as exc:
        return render("console/login.html", 404, next="", email=email, problem=exc.description)
    back = current_app.config["PUBLIC_URL"] + url_for("console.sso_return")
    login = url_for("oauth.sso_login", integration_id=found["integration_id"], return_to=back)
    return redirect(login, 303)


@bp.route("/sso-return", methods=["GET", "POST"])
def sso_return() -> ResponseReturnValue:
    """GET: a page whose script posts the key from the URL fragment (which browsers never
    send); POST: trade that SSO session key for a console session (and revoke the key)."""
    if request.method == "GET":
        return render("console/sso_return.html")
    if not _same_origin():
        raise PageRefused(403, "Not allowed", "Sign in from this site's own sign-in page.")
    error = request.form.get("error_description") or request.form.get("error")
    if error:
        raise PageRefused(401, "SSO sign-in refused", f"The sign-in was refused: {error}.")
    raw = request.form.get("key", "")
    try:
        snapshot = load_key(raw)
        check_key(snapshot, raw)
    except Problem as exc:
        raise PageRefused(401, "SSO sign-in failed", str(exc.description)) from exc
    user = snapshot.user
    if user is None or snapshot.role != "admin":
        raise PageRefused(403, "Admins only", "The console is for admins of a tenant.")
    with database.atomic():
        revoke_key(snapshot.row)  # the console session replaces it
        row, cookie = open_console_session(snapshot.tenant.id, user.id, SESSION_LIFETIME)
        record_audit(
            "console.login",
            "console_session",
            row.id,
            {"user": user.email, "via": "sso"},
            tenant_id=snapshot.tenant.id,
            actor_user_id=user.id,
        )
    return _signed_in(url_for("console.overview"), cookie)


def _signed_in(target: str, cookie: str) -> ResponseReturnValue:
    """Go to ``target`` with the console session's cookie set."""
    response = redirect(target, 303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path="/console",
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )
    return response


@bp.route("/logout", methods=["POST"])
def logout() -> ResponseReturnValue:
    seat: Seat = g.seat
    check_csrf(seat)
    with database.atomic():
        end_session(seat.session)
    response = redirect(url_for("console.login"), 303)
    response.delete_cookie(COOKIE, path="/console")
    return response


@bp.route("/")
def overview() -> ResponseReturnValue:
    return tabs.overview(g.seat)


@bp.route("/sso", methods=["GET", "POST"])
def sso() -> ResponseReturnValue:
    return tabs.sso(g.seat)


@bp.route("/tenants")
def tenants() -> ResponseReturnValue:
    return tabs.tenant_list(g.seat)


@bp.route("/tenants/<tenant_id>/<action>", methods=["GET", "POST"])
def tenant_action(tenant_id: str, action: str) -> ResponseReturnValue:
    return tabs.tenant_action(g.seat, tenant_id, action)


@bp.route("/gateway")
def gateway() -> ResponseReturnValue:
    return tabs.gateway(g.seat)


add_webhook_pages(bp, "/webhooks")
