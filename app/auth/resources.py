"""``/auth``: password login and whoami."""

from __future__ import annotations

from typing import Any

from app.audit import record_audit
from app.auth import devices
from app.auth.access import client_ip, current_principal
from app.auth.issuing import issue_session_key, new_secret
from app.auth.passwords import authenticate_user
from app.auth.schemas import LoginResultSchema, LoginSchema, WhoAmISchema
from app.auth.throttle import give_back, refuse_or_take_slot
from app.store.db import database
from app.tenants.directory import choose_seat
from app.web.api import Blueprint
from app.web.problems import Problem

blp = Blueprint("auth", __name__, url_prefix="/api/v1/auth", description="Login and identity")


@blp.route("/login", methods=["POST"])
@blp.arguments(LoginSchema)
@blp.response(201, LoginResultSchema)
@blp.problem(401, "Wrong email or password")
@blp.problem(429, "Too many failed attempts for this email or address (or device)")
def login(credentials: dict[str, Any]) -> dict[str, Any]:
    """Exchange email and password for an API key valid 24 hours.

    Failures are throttled per email and client address, or, for a `device_token` from an
    earlier login of this user, per device: known devices are not locked out by others.
    """
    email = credentials["email"].strip().lower()
    device = credentials["device_token"]
    known = devices.trusted(device, email)
    idents = {"device": device} if known and device else {"email": email, "ip": client_ip()}
    refuse_or_take_slot(**idents)  # before bcrypt: concurrent guesses cannot overrun it
    user = authenticate_user(credentials["email"], credentials["password"])
    if user is None:
        raise Problem(401, "Wrong email or password.")  # the slot stays taken: a failure
    give_back(**idents)
    seat, choices = choose_seat(user, credentials.get("tenant"))
    prepared = new_secret("sess")  # bcrypt before the transaction: SQLite's write lock stays short
    with database.atomic():
        row, answer = issue_session_key(user, seat.role, seat.tenant.id, "login", prepared)
        record_audit(
            "auth.login",
            "api_key",
            row.id,
            {"user": user.email},
            tenant_id=seat.tenant.id,
            actor_user_id=user.id,
        )
    return {
        **answer,
        "tenants": [choice.view() for choice in choices],
        "device_token": device if known else devices.issue(email),
    }


@blp.route("/whoami", methods=["GET"])
@blp.auth(None)
@blp.response(200, WhoAmISchema)
def whoami() -> dict[str, Any]:
    """Describe the calling API key: id, name, scopes, owner and the tenant it acts in."""
    principal = current_principal()
    owner = principal.user
    return {
        "id": principal.key.id,
        "name": principal.key.name,
        "key_prefix": principal.key.key_prefix,
        "scopes": sorted(principal.scopes),
        "expires_at": principal.key.expires_at,
        "platform": principal.platform,
        "tenant": principal.tenant,
        "owner": None
        if owner is None
        else {
            "id": owner.id,
            "email": owner.email,
            "role": principal.role,
            "platform_admin": owner.platform_admin,
        },
    }
