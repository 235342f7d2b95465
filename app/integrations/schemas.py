"""Schemas for ``/integrations``."""

from __future__ import annotations

from typing import Any

import marshmallow as ma

from app.connectors.configs import redact_config
from app.web.api import PageArgsSchema, UTCDateTime, page_schema
from app.web.constraints import IpNetwork

INTEGRATION_TYPES = ("sso", "webhook", "api", "notification")
INTEGRATION_STATUSES = ("active", "inactive", "error")


class SubscriptionSchema(ma.Schema):
    events = ma.fields.List(
        ma.fields.String(validate=ma.validate.Length(min=1, max=200)),
        required=True,
        validate=ma.validate.Length(min=1, max=50),
        metadata={"description": "Event types or wildcards (`*`, `github.*`)"},
    )
    action = ma.fields.String(
        required=True, metadata={"description": "Connector action to run for each event"}
    )
    input = ma.fields.Dict(
        load_default=dict,
        metadata={"description": "Action input; strings may use {{event.data.field}}"},
    )
    filter = ma.fields.Dict(
        allow_none=True,
        metadata={
            "description": "Run only for events whose body matches (the webhooks' `filter`, "
            "see docs/webhook-features.md)"
        },
    )


class IntegrationSchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=200))
    type = ma.fields.String(required=True, validate=ma.validate.OneOf(INTEGRATION_TYPES))
    provider = ma.fields.String(
        required=True,
        validate=ma.validate.Length(min=1, max=100),
        metadata={"description": "Connector name, see GET /api/v1/connectors"},
    )
    status = ma.fields.String(
        load_default="inactive",
        validate=ma.validate.OneOf(INTEGRATION_STATUSES),
        metadata={
            "description": "`inactive` (the default) is switched off: inbound webhooks, "
            "subscriptions, actions and the gateway refuse it (409). `active` and `error` both "
            "serve; a failed test turns `active` into `error`, a passing one back to `active`."
        },
    )
    description = ma.fields.String(load_default="", validate=ma.validate.Length(max=2000))
    config = ma.fields.Dict(
        load_default=dict,
        metadata={"description": "Connector configuration; secret fields read back as ********"},
    )
    metadata = ma.fields.Dict(load_default=dict)
    subscriptions = ma.fields.List(
        ma.fields.Nested(SubscriptionSchema),
        load_default=list,
        validate=ma.validate.Length(max=50),
        metadata={"description": "Run a connector action when matching events happen"},
    )
    allowed_ips = ma.fields.List(
        IpNetwork(),
        allow_none=True,
        load_default=None,
        validate=ma.validate.Length(max=500),
        metadata={"description": "CIDR allow-list for inbound requests"},
    )
    created_at = UTCDateTime(dump_only=True)
    updated_at = UTCDateTime(dump_only=True)
    created_by = ma.fields.String(attribute="created_by_id", dump_only=True, allow_none=True)

    @ma.post_dump
    def _redact(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if "config" in data:
            data["config"] = redact_config(data["config"] or {})
        return data


class IntegrationQueryArgsSchema(PageArgsSchema):
    type = ma.fields.String(validate=ma.validate.OneOf(INTEGRATION_TYPES))
    status = ma.fields.String(validate=ma.validate.OneOf(INTEGRATION_STATUSES))
    provider = ma.fields.String(validate=ma.validate.Length(max=100))
    q = ma.fields.String(
        validate=ma.validate.Length(min=1, max=200),
        metadata={"description": "Case-insensitive substring of the name"},
    )


class TestResultSchema(ma.Schema):
    success = ma.fields.Boolean()
    message = ma.fields.String()
    data = ma.fields.Dict()


class ActionInputSchema(ma.Schema):
    """Any JSON object: validated against the action's own input schema."""

    class Meta:
        unknown = ma.INCLUDE


class JobAcceptedSchema(ma.Schema):
    job_id = ma.fields.String(metadata={"description": "Poll GET /api/v1/jobs/{job_id}"})


IntegrationPageSchema = page_schema(IntegrationSchema, "IntegrationPage")
