"""``/portal-sessions``: single-use links that open a tenant's portal, and their revocation."""

from __future__ import annotations

from typing import Any

from flask import url_for
from flask.views import MethodView

from app.audit import record_audit
from app.auth.access import current_principal
from app.console.schemas import PortalSessionCreatedSchema, PortalSessionSchema
from app.console.sessions import end_session, open_portal_session
from app.oauth.pages import checked_return_to
from app.store.db import database
from app.store.models import ConsoleSession, Tenant
from app.web.api import Blueprint, links_to
from app.web.problems import Problem

blp = Blueprint(
    "portal_sessions", __name__, url_prefix="/api/v1", description="Tenant portal sessions"
)


def _tenant_of_request(named: str | None) -> Tenant:
    """The tenant a session is for: any (platform keys) or the key's own (tenant admins)."""
    principal = current_principal().require("admin")
    if named is None or named in (principal.tenant.id, principal.tenant.external_id):
        return principal.tenant
    if not principal.platform:
        raise Problem(
            403,
            "A tenant's key opens portal sessions for its own tenant only.",
            errors={"tenant": ["not your tenant"]},
        )
    tenant = Tenant.get_or_none((Tenant.id == named) | (Tenant.external_id == named))
    if tenant is None or tenant.status == "deleting":
        raise Problem(422, f"No tenant {named!r}.", errors={"tenant": ["no such tenant"]})
    return tenant


@blp.route("/portal-sessions")
class PortalSessions(MethodView):
    @blp.auth("admin")
    @blp.arguments(PortalSessionSchema)
    @blp.response(201, PortalSessionCreatedSchema)
    @blp.doc(**links_to("session_id", "DELETE /api/v1/portal-sessions/{session_id}"))
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Open a tenant portal session: a single-use link for the user's browser."""
        tenant = _tenant_of_request(data.get("tenant"))
        try:
            return_url = checked_return_to(data.get("return_url"))
        except Problem as exc:
            raise Problem(
                422,
                "`return_url` must be on an origin listed in SWITCHBOARD_RETURN_TO_ORIGINS.",
                errors={"return_url": ["origin is not allowed"]},
            ) from exc
        with database.atomic():
            row, token = open_portal_session(
                tenant.id,
                read_only=data["read_only"],
                expires_in=data["expires_in"],
                return_url=return_url,
                theme=data.get("theme"),
                created_by_key=current_principal().key.id,
            )
            record_audit(
                "portal_session.created",
                "portal_session",
                row.id,
                {"read_only": row.read_only, "expires_in": data["expires_in"]},
                tenant_id=tenant.id,
            )
        return {
            "id": row.id,
            "url": url_for("portal.start", token=token, _external=True),
            "link_expires_at": row.link_expires_at,
            "expires_at": row.expires_at,
            "tenant_id": tenant.id,
            "read_only": row.read_only,
        }


@blp.route("/portal-sessions/<session_id>", methods=["DELETE"])
@blp.auth("admin")
@blp.response(204)
@blp.problem(404, "No such portal session")
def revoke_portal_session(session_id: str) -> None:
    """End a portal session now: its link and cookie stop working."""
    principal = current_principal()
    with database.atomic():
        query = ConsoleSession.kind == "portal", ConsoleSession.id == session_id
        if principal.platform:
            # Operators revoke any tenant's session by its id (they may open them for any).
            row = ConsoleSession.get_or_none(*query)
        else:
            row = ConsoleSession.get_of(principal.tenant_id, *query)
        if row is None:
            raise Problem(404, f"No portal session {session_id!r}.")
        end_session(row)
        record_audit(
            "portal_session.revoked", "portal_session", row.id, {}, tenant_id=row.tenant_id
        )
