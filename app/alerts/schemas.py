"""Schemas of ``/alert-rules`` and their firings."""

from __future__ import annotations

import marshmallow as ma

from app.alerts.conditions import CONDITIONS
from app.web.api import PageArgsSchema, UTCDateTime, page_schema

# Each condition type's own parameters, as the server checks them (app.alerts.conditions).
_CONDITION_SCHEMAS = [
    {**spec.schema, "properties": {**spec.schema["properties"], "type": {"const": name}}}
    for name, spec in CONDITIONS.items()
]
_CONDITION_HELP = "; ".join(f"`{name}`: {spec.description}" for name, spec in CONDITIONS.items())


class AlertRuleSchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=200))
    description = ma.fields.String(load_default="", validate=ma.validate.Length(max=2000))
    condition = ma.fields.Dict(
        required=True,
        metadata={
            "description": '`{"type": …, parameters}`; windows are in seconds (60 to 7 days). '
            + _CONDITION_HELP,
            "oneOf": _CONDITION_SCHEMAS,
        },
    )
    target = ma.fields.Dict(
        required=True,
        metadata={
            "description": '`{"type": "webhook"}` emits `alert.fired`/`alert.resolved` '
            'events to subscribed webhooks; `{"type": "action", "integration_id": …, '
            '"action": "send_message", "input": {…}}` runs a connector action, `input` '
            "rendered from `{{alert.text}}`, `{{alert.summary}}`, `{{alert.subject}}`, "
            "`{{alert.status}}`, `{{alert.rule}}`, `{{alert.details.…}}` (default "
            '`{"text": "{{alert.text}}"}`).',
            "oneOf": [
                {
                    "type": "object",
                    "properties": {"type": {"const": "webhook"}},
                    "required": ["type"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": "action"},
                        "integration_id": {"type": "string", "maxLength": 40},
                        "action": {"type": "string", "maxLength": 200},
                        "input": {"type": "object"},
                    },
                    "required": ["type", "integration_id", "action"],
                    "additionalProperties": False,
                },
            ],
        },
    )
    cooldown_seconds = ma.fields.Integer(
        load_default=300,
        validate=ma.validate.Range(min=0, max=7 * 86400),
        metadata={"description": "After a firing resolves, the same subject stays quiet this long"},
    )
    notify_resolved = ma.fields.Boolean(
        load_default=True, metadata={"description": "Also notify when a firing resolves"}
    )
    enabled = ma.fields.Boolean(load_default=True)
    created_at = UTCDateTime(dump_only=True)
    updated_at = UTCDateTime(dump_only=True)


class AlertRuleQueryArgsSchema(PageArgsSchema):
    enabled = ma.fields.Boolean()
    condition_type = ma.fields.String(validate=ma.validate.OneOf(sorted(CONDITIONS)))


class AlertNotificationSchema(ma.Schema):
    phase = ma.fields.String(metadata={"description": "`fired` or `resolved`"})
    target_type = ma.fields.String()
    status = ma.fields.String(metadata={"description": "`pending`, `sent` or `failed`"})
    attempts = ma.fields.Integer()
    last_error = ma.fields.String(allow_none=True)
    event_id = ma.fields.String(allow_none=True, metadata={"description": "For webhook targets"})
    sent_at = UTCDateTime(allow_none=True)


class AlertFiringSchema(ma.Schema):
    id = ma.fields.String()
    rule_id = ma.fields.String()
    subject = ma.fields.String(
        metadata={"description": "What it fired for: `webhook:wh_…`, `integration:int_…`, …"}
    )
    status = ma.fields.String(metadata={"description": "`firing` or `resolved`"})
    summary = ma.fields.String()
    details = ma.fields.Dict()
    fired_at = UTCDateTime()
    resolved_at = UTCDateTime(allow_none=True)
    notifications = ma.fields.List(ma.fields.Nested(AlertNotificationSchema))


class FiringQueryArgsSchema(PageArgsSchema):
    status = ma.fields.String(validate=ma.validate.OneOf(["firing", "resolved"]))


AlertRulePageSchema = page_schema(AlertRuleSchema, "AlertRulePage")
AlertFiringPageSchema = page_schema(AlertFiringSchema, "AlertFiringPage")
