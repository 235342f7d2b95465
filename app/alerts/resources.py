"""``/alert-rules``: alert rules (CRUD) and each rule's history of firings."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from app.alerts.conditions import CONDITIONS, json_text_contains, with_defaults
from app.alerts.notify import DEFAULT_INPUT
from app.alerts.schemas import (
    AlertFiringPageSchema,
    AlertRulePageSchema,
    AlertRuleQueryArgsSchema,
    AlertRuleSchema,
    FiringQueryArgsSchema,
)
from app.audit import record_audit
from app.auth.access import current_principal, current_tenant_id
from app.connectors.contract import config_errors
from app.connectors.extension import get_registry
from app.connectors.runtime import render_template
from app.store.db import database
from app.store.models import AlertFiring, AlertNotification, AlertRule, Integration, utcnow
from app.web.api import Blueprint, links_to, paginate
from app.web.problems import Problem

blp = Blueprint("alerts", __name__, url_prefix="/api/v1/alert-rules", description="Alerts")

_SAMPLE_ALERT: dict[str, Any] = {
    "alert": {
        "id": "alf_sample",
        "rule_id": "alr_sample",
        "rule": "sample",
        "condition": "webhook_disabled",
        "subject": "webhook:wh_sample",
        "status": "firing",
        "summary": "sample",
        "details": {},
        "fired_at": "2026-01-01T00:00:00Z",
        "resolved_at": None,
        "text": "[Switchboard] ALERT sample: sample",
    }
}


def _invalid(field: str, errors: Any) -> Problem:
    return Problem(422, f"Invalid `{field}`; see errors.", errors={field: errors})


def _check_condition(condition: dict[str, Any]) -> dict[str, Any]:
    kind = condition.get("type")
    if kind not in CONDITIONS:
        raise _invalid("condition", {"type": [f"one of: {', '.join(sorted(CONDITIONS))}"]})
    errors = config_errors(CONDITIONS[kind].schema, condition)
    if errors:
        raise _invalid("condition", errors)
    integration_id = condition.get("integration_id")
    tenant_id = current_tenant_id()
    if (
        integration_id
        and not Integration.of(tenant_id).where(Integration.id == integration_id).exists()
    ):
        raise _invalid("condition", {"integration_id": [f"no integration {integration_id!r}"]})
    return with_defaults(condition)


def _check_target(target: dict[str, Any]) -> dict[str, Any]:
    kind = target.get("type")
    if kind == "webhook":
        if set(target) != {"type"}:
            raise _invalid("target", {"_schema": ["a webhook target takes no other fields"]})
        return target
    if kind != "action":
        raise _invalid("target", {"type": ["`action` or `webhook`"]})
    unknown = set(target) - {"type", "integration_id", "action", "input"}
    if unknown:
        raise _invalid("target", {name: ["unknown field"] for name in sorted(unknown)})
    row = Integration.get_of(
        current_tenant_id(), Integration.id == str(target.get("integration_id"))
    )
    if row is None:
        raise _invalid("target", {"integration_id": ["no such integration"]})
    connector = get_registry().get(row.provider)
    action = connector.actions.get(str(target.get("action"))) if connector else None
    if action is None:
        known = ", ".join(sorted(connector.actions)) if connector else "none (not loaded)"
        raise _invalid("target", {"action": [f"the integration's connector has: {known}"]})
    template = target.get("input", DEFAULT_INPUT)
    if not isinstance(template, dict):
        raise _invalid("target", {"input": ["must be an object"]})
    errors = config_errors(action.input_schema, render_template(template, _SAMPLE_ALERT))
    if errors:
        raise _invalid("target", {f"input.{path}": msgs for path, msgs in errors.items()})
    return {**target, "input": template}


def get_rule(rule_id: str) -> AlertRule:
    """The tenant's rule or a 404 problem."""
    row = AlertRule.get_of(current_tenant_id(), AlertRule.id == rule_id)
    if row is None:
        raise Problem(404, f"No alert rule {rule_id!r}.")
    return row


@blp.route("")
class AlertRules(MethodView):
    @blp.auth("alerts:read")
    @blp.arguments(AlertRuleQueryArgsSchema, location="query")
    @blp.response(200, AlertRulePageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List alert rules."""
        query = AlertRule.of(current_tenant_id())
        if "enabled" in args:
            query = query.where(AlertRule.enabled == args["enabled"])
        if "condition_type" in args:
            needle = f'"type":"{args["condition_type"]}"'  # stored as compact JSON
            query = query.where(json_text_contains(AlertRule.condition, needle))
        return paginate(query.order_by(AlertRule.created_at.desc(), AlertRule.id), args)

    @blp.auth("alerts:write")
    @blp.arguments(AlertRuleSchema)
    @blp.response(201, AlertRuleSchema)
    @blp.problem(422, "Unknown condition type, bad parameters, or a target that cannot work")
    @blp.doc(
        **links_to(
            "rule_id",
            *(f"{m} /api/v1/alert-rules/{{rule_id}}" for m in ("GET", "PATCH", "DELETE")),
            "GET /api/v1/alert-rules/{rule_id}/firings",
        )
    )
    def post(self, data: dict[str, Any]) -> AlertRule:
        """Create an alert rule: a condition the workers watch and a target to notify."""
        data["condition"] = _check_condition(data["condition"])
        data["target"] = _check_target(data["target"])
        principal = current_principal()
        with database.atomic():
            row = AlertRule.create(tenant_id=principal.tenant_id, created_by=principal.user, **data)
            record_audit("alert_rule.created", "alert_rule", row.id, data)
        return row


@blp.route("/<rule_id>")
class AlertRulesById(MethodView):
    @blp.auth("alerts:read")
    @blp.response(200, AlertRuleSchema)
    @blp.problem(404, "No such alert rule")
    def get(self, rule_id: str) -> AlertRule:
        """Get one alert rule."""
        return get_rule(rule_id)

    @blp.auth("alerts:write")
    @blp.arguments(AlertRuleSchema(partial=True))
    @blp.response(200, AlertRuleSchema)
    @blp.problem(404, "No such alert rule")
    @blp.problem(422, "Unknown condition type, bad parameters, or a target that cannot work")
    def patch(self, data: dict[str, Any], rule_id: str) -> AlertRule:
        """Change an alert rule; `enabled: false` ends its open firings without notices."""
        if "condition" in data:
            data["condition"] = _check_condition(data["condition"])
        if "target" in data:
            data["target"] = _check_target(data["target"])
        with database.atomic():
            row = get_rule(rule_id)
            for field, value in data.items():
                setattr(row, field, value)
            row.updated_at = utcnow()
            row.save()
            record_audit("alert_rule.updated", "alert_rule", row.id, data)
        return row

    @blp.auth("alerts:write")
    @blp.response(204)
    @blp.problem(404, "No such alert rule")
    def delete(self, rule_id: str) -> None:
        """Delete an alert rule and its history."""
        with database.atomic():
            row = get_rule(rule_id)
            row.delete_instance()
            record_audit("alert_rule.deleted", "alert_rule", row.id, {"name": row.name})


@blp.route("/<rule_id>/firings", methods=["GET"])
@blp.auth("alerts:read")
@blp.arguments(FiringQueryArgsSchema, location="query")
@blp.response(200, AlertFiringPageSchema)
@blp.problem(404, "No such alert rule")
def list_firings(args: dict[str, Any], rule_id: str) -> dict[str, Any]:
    """A rule's firings, newest first, each with its notifications."""
    tenant_id = get_rule(rule_id).tenant_id
    query = AlertFiring.of(tenant_id).where(AlertFiring.rule == rule_id)
    if "status" in args:
        query = query.where(AlertFiring.status == args["status"])
    page = paginate(query.order_by(AlertFiring.fired_at.desc(), AlertFiring.id), args)
    ids = [firing.id for firing in page["items"]]
    notices: dict[str, list[AlertNotification]] = {i: [] for i in ids}
    for notice in (
        AlertNotification.of(tenant_id)
        .where(AlertNotification.firing.in_(ids))
        .order_by(AlertNotification.created_at)
    ):
        notices[notice.firing_id].append(notice)
    for firing in page["items"]:
        firing.notifications = notices[firing.id]
    return page
