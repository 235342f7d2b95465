"""``/logs`` (integration activity) and ``/audit-log`` (who changed what)."""

from __future__ import annotations

from typing import Any

from app.auth.access import current_principal, current_tenant_id
from app.logs.bodies import BODIES_SCOPE, without_bodies
from app.logs.schemas import (
    AuditPageSchema,
    AuditQueryArgsSchema,
    LogPageSchema,
    LogQueryArgsSchema,
)
from app.store.models import AuditLog, IntegrationLog
from app.web.api import Blueprint
from app.web.keyset import paginate_keyset

blp = Blueprint("logs", __name__, url_prefix="/api/v1", description="Logs and audit trail")


def log_page(args: dict[str, Any]) -> dict[str, Any]:
    """One page of the integration logs matching the filters in ``args``, newest first (logged
    bodies only for keys that may read them, see :mod:`app.logs.bodies`)."""
    query = IntegrationLog.of(current_tenant_id())
    for field in ("integration_id", "status", "event_type"):
        if args.get(field):
            query = query.where(getattr(IntegrationLog, field) == args[field])
    page = paginate_keyset(query, args, [IntegrationLog.id], "logs")
    if not current_principal().has(BODIES_SCOPE):
        for row in page["items"]:
            row.event_data = without_bodies(row.event_data)
    return page


@blp.route("/logs", methods=["GET"])
@blp.auth("logs:read")
@blp.arguments(LogQueryArgsSchema, location="query")
@blp.response(200, LogPageSchema)
def list_logs(args: dict[str, Any]) -> dict[str, Any]:
    """List integration logs (every outbound call, test and gateway request)."""
    return log_page(args)


@blp.route("/audit-log", methods=["GET"])
@blp.auth("admin")
@blp.arguments(AuditQueryArgsSchema, location="query")
@blp.response(200, AuditPageSchema)
def list_audit_log(args: dict[str, Any]) -> dict[str, Any]:
    """List audit entries (admins only), newest first."""
    query = AuditLog.of(current_tenant_id())
    for field in ("action", "resource_type", "resource_id", "actor_key_id", "actor_user_id"):
        if args.get(field):
            query = query.where(getattr(AuditLog, field) == args[field])
    if args.get("since"):
        query = query.where(AuditLog.created_at >= args["since"])
    if args.get("until"):
        query = query.where(AuditLog.created_at < args["until"])
    return paginate_keyset(query, args, [AuditLog.id], "audit-log")
