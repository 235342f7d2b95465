"""``/integrations``: CRUD, filters and per-integration logs."""

from __future__ import annotations

from typing import Any

from flask import g
from flask.views import MethodView

from app.api import Blueprint, paginate
from app.audit import record_audit
from app.db import database
from app.events import emit_event
from app.integrations.schemas import (
    IntegrationPageSchema,
    IntegrationQueryArgsSchema,
    IntegrationSchema,
)
from app.logs.resources import log_query
from app.logs.schemas import LogPageSchema, LogQueryArgsSchema
from app.models import Integration, utcnow
from app.problems import Problem

blp = Blueprint(
    "integrations", __name__, url_prefix="/api/v1/integrations", description="Integrations"
)


def get_integration(integration_id: str) -> Integration:
    """The integration or a 404 problem."""
    row = Integration.get_or_none(Integration.id == integration_id)
    if row is None:
        raise Problem(404, f"No integration {integration_id!r}.")
    return row


def integration_view(row: Integration) -> dict[str, Any]:
    """The integration as the API shows it (secrets redacted)."""
    return IntegrationSchema().dump(row)


@blp.route("")
class Integrations(MethodView):
    @blp.auth("integrations:read")
    @blp.arguments(IntegrationQueryArgsSchema, location="query")
    @blp.response(200, IntegrationPageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List integrations, filtered by type, status, provider or name."""
        query = Integration.select()
        for field in ("type", "status", "provider"):
            if field in args:
                query = query.where(getattr(Integration, field) == args[field])
        if "q" in args:
            query = query.where(Integration.name.contains(args["q"]))
        return paginate(query.order_by(Integration.created_at.desc(), Integration.id), args)

    @blp.auth("integrations:write")
    @blp.arguments(IntegrationSchema)
    @blp.response(201, IntegrationSchema)
    def post(self, data: dict[str, Any]) -> Integration:
        """Create an integration."""
        with database.atomic():
            row = Integration.create(created_by=g.principal.user, **data)
            view = integration_view(row)
            record_audit("integration.created", "integration", row.id, view)
            emit_event("integration.created", view)
        return row


@blp.route("/<integration_id>")
class IntegrationsById(MethodView):
    @blp.auth("integrations:read")
    @blp.response(200, IntegrationSchema)
    @blp.problem(404, "No such integration")
    def get(self, integration_id: str) -> Integration:
        """Get one integration."""
        return get_integration(integration_id)

    @blp.auth("integrations:write")
    @blp.arguments(IntegrationSchema(partial=True))
    @blp.response(200, IntegrationSchema)
    @blp.problem(404, "No such integration")
    def patch(self, data: dict[str, Any], integration_id: str) -> Integration:
        """Update some fields of an integration."""
        with database.atomic():
            row = get_integration(integration_id)
            before = integration_view(row)
            for field, value in data.items():
                setattr(row, field, value)
            row.updated_at = utcnow()
            row.save()
            after = integration_view(row)
            changes = {k: after[k] for k in data if before.get(k) != after.get(k)}
            record_audit("integration.updated", "integration", row.id, changes)
            emit_event("integration.updated", {**after, "changed": sorted(changes)})
        return row

    @blp.auth("integrations:write")
    @blp.response(204)
    @blp.problem(404, "No such integration")
    def delete(self, integration_id: str) -> None:
        """Delete an integration."""
        with database.atomic():
            row = get_integration(integration_id)
            view = integration_view(row)
            row.delete_instance()
            record_audit("integration.deleted", "integration", row.id, {"name": row.name})
            emit_event("integration.deleted", view)


@blp.route("/<integration_id>/logs", methods=["GET"])
@blp.auth("logs:read")
@blp.arguments(LogQueryArgsSchema, location="query")
@blp.response(200, LogPageSchema)
@blp.problem(404, "No such integration")
def integration_logs(args: dict[str, Any], integration_id: str) -> dict[str, Any]:
    """List one integration's logs, newest first."""
    get_integration(integration_id)
    return paginate(log_query({**args, "integration_id": integration_id}), args)
