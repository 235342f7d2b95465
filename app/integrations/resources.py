"""``/integrations``: CRUD, filters and per-integration logs."""

from __future__ import annotations

import time
from typing import Any

import redis
from flask.views import MethodView

from app.audit import record_audit, record_change, record_update
from app.auth.access import current_principal, current_tenant_id
from app.connectors.configs import decrypt_config
from app.connectors.contract import config_errors
from app.connectors.extension import connector_context, get_registry, require_connector
from app.connectors.jobs import enqueue_action
from app.integrations.schemas import (
    ActionInputSchema,
    IntegrationPageSchema,
    IntegrationQueryArgsSchema,
    IntegrationSchema,
    JobAcceptedSchema,
    TestResultSchema,
)
from app.integrations.service import claim_sso_domains, prepare_create, prepare_update
from app.limits.quotas import check_room
from app.logs.resources import log_page
from app.logs.schemas import LogPageSchema, LogQueryArgsSchema
from app.store.db import database
from app.store.models import Integration, IntegrationLog, utcnow
from app.stream import kinds
from app.web.api import Blueprint, links_to, paginate
from app.web.problems import Problem

INTEGRATION = "/api/v1/integrations/{integration_id}"

blp = Blueprint(
    "integrations", __name__, url_prefix="/api/v1/integrations", description="Integrations"
)


def get_integration(integration_id: str) -> Integration:
    """The tenant's integration or a 404 problem."""
    row = Integration.get_of(current_tenant_id(), Integration.id == integration_id)
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
        query = Integration.of(current_tenant_id())
        for field in ("type", "status", "provider"):
            if field in args:
                query = query.where(getattr(Integration, field) == args[field])
        if "q" in args:
            query = query.where(Integration.name.contains(args["q"]))
        return paginate(query.order_by(Integration.created_at.desc(), Integration.id), args)

    @blp.auth("integrations:write")
    @blp.arguments(IntegrationSchema)
    @blp.response(201, IntegrationSchema)
    @blp.problem(422, "Invalid fields, an unknown provider, or a config its connector refuses")
    @blp.doc(
        **links_to(
            "integration_id",
            *(f"{m} {INTEGRATION}" for m in ("GET", "PATCH", "DELETE")),
            f"POST {INTEGRATION}/test",
            f"GET {INTEGRATION}/logs",
            f"POST {INTEGRATION}/actions/{{action}}",
            f"GET {INTEGRATION}/oauth",
            f"POST {INTEGRATION}/oauth/authorize",
            f"POST {INTEGRATION}/oauth/revoke",
            "GET /api/v1/auth/sso/{integration_id}/login",
            "POST /api/v1/auth/sso/{integration_id}/link",
            f"GET {INTEGRATION}/sso/identities",
            f"POST {INTEGRATION}/sso/identities",
            "POST /api/v1/inbound/{integration_id}",
            *(
                f"{m} /api/v1/gateway/{{integration_id}}{tail}"
                for m in ("GET", "POST", "PUT", "PATCH", "DELETE")
                for tail in ("/", "/{path}")
            ),
        )
    )
    def post(self, data: dict[str, Any]) -> Integration:
        """Create an integration."""
        principal = current_principal()
        tenant_id = principal.tenant_id
        fields = prepare_create(data, tenant_id)
        with database.atomic():
            check_room(tenant_id, "max_integrations", Integration.of(tenant_id))
            row = Integration.create(tenant_id=tenant_id, created_by=principal.user, **fields)
            claim_sso_domains(row)
            view = integration_view(row)
            record_change("integration", "created", row.id, view, view)
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
    @blp.arguments(IntegrationSchema(partial=True), required=False)  # no body: no change
    @blp.response(200, IntegrationSchema)
    @blp.problem(404, "No such integration")
    def patch(self, data: dict[str, Any], integration_id: str) -> Integration:
        """Update some fields of an integration."""
        with database.atomic():
            row = get_integration(integration_id)
            before = integration_view(row)
            for field, value in prepare_update(row, data).items():
                setattr(row, field, value)
            row.updated_at = utcnow()
            row.save()
            claim_sso_domains(row)
            record_update("integration", row.id, before, integration_view(row), data)
            kinds.integration_status_changed(row.tenant_id, row.id, before["status"], row.status)
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
            record_change("integration", "deleted", row.id, {"name": row.name}, view)


@blp.route("/<integration_id>/logs", methods=["GET"])
@blp.auth("logs:read")
@blp.arguments(LogQueryArgsSchema, location="query")
@blp.response(200, LogPageSchema)
@blp.problem(404, "No such integration")
def integration_logs(args: dict[str, Any], integration_id: str) -> dict[str, Any]:
    """List one integration's logs, newest first."""
    get_integration(integration_id)
    return log_page({**args, "integration_id": integration_id})


@blp.route("/<integration_id>/test", methods=["POST"])
@blp.auth("integrations:write")
@blp.response(200, TestResultSchema)
@blp.problem(404, "No such integration")
@blp.problem(503, "The integration's connector failed to load or is not installed")
def test_integration(integration_id: str) -> dict[str, Any]:
    """Run the connector's test and log it; an active integration becomes `error` if it fails
    (and `active` again once it passes); an inactive one stays inactive."""
    row = get_integration(integration_id)
    connector = require_connector(row.provider, stored=True)
    started = time.perf_counter()
    result = get_registry().run_test(
        connector, decrypt_config(row.config), connector_context(row.id, row.tenant_id)
    )
    elapsed = (time.perf_counter() - started) * 1000
    with database.atomic():
        status = row.status
        if status != "inactive":  # a test never switches an integration on or off
            status = "active" if result.success else "error"
            Integration.update_of(row.tenant_id, status=status, updated_at=utcnow()).where(
                Integration.id == row.id
            ).execute()
            kinds.integration_status_changed(row.tenant_id, row.id, row.status, status)
        logged = IntegrationLog.create(
            tenant_id=row.tenant_id,
            integration_id=row.id,
            event_type="integration.test",
            event_data={"message": result.message},
            status="success" if result.success else "error",
            error_message=None if result.success else result.message,
            response_time_ms=round(elapsed, 2),
        )
        kinds.log_created(logged.to_dict())
        record_audit("integration.tested", "integration", row.id, {"status": status})
    return result.to_dict()


@blp.route("/<integration_id>/actions/<action>", methods=["POST"])
@blp.auth("integrations:write")
@blp.arguments(ActionInputSchema)
@blp.response(202, JobAcceptedSchema)
@blp.doc(
    **links_to("job_id", "GET /api/v1/jobs/{job_id}", status="202", value="$response.body#/job_id")
)
@blp.problem(404, "No such integration or action")
@blp.problem(409, "The integration is inactive")
@blp.problem(503, "The job queue is unavailable, or the connector failed to load")
def run_integration_action(
    action_input: dict[str, Any], integration_id: str, action: str
) -> dict[str, Any]:
    """Queue a connector action (input validated against its schema); poll the job."""
    row = get_integration(integration_id)
    if row.status == "inactive":
        raise Problem(409, "This integration is inactive; set its status to active to run actions.")
    connector = require_connector(row.provider, stored=True)
    spec = connector.actions.get(action)
    if spec is None:
        known = ", ".join(sorted(connector.actions)) or "none"
        raise Problem(404, f"Connector {connector.name!r} has no action {action!r} (has: {known}).")
    errors = config_errors(spec.input_schema, action_input)
    if errors:
        raise Problem(422, f"Invalid input for action {action!r}; see errors.", errors=errors)
    try:
        job_id = enqueue_action(row.tenant_id, row.id, action, action_input)
    except redis.RedisError as exc:
        raise Problem(503, "The job queue is unavailable; try again shortly.") from exc
    record_audit(
        "integration.action_queued", "integration", row.id, {"action": action, "job_id": job_id}
    )
    return {"job_id": job_id}
