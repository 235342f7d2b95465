"""Schemas for integration logs and the audit log."""

from __future__ import annotations

import marshmallow as ma

from app.web.api import UTCDateTime
from app.web.keyset import KeysetArgsSchema, keyset_page_schema


class LogSchema(ma.Schema):
    id = ma.fields.Integer()
    integration_id = ma.fields.String(allow_none=True)
    event_type = ma.fields.String()
    event_data = ma.fields.Dict()
    status = ma.fields.String(metadata={"description": "success | error | pending"})
    error_message = ma.fields.String(allow_none=True)
    response_time_ms = ma.fields.Float(allow_none=True)
    created_at = UTCDateTime()


class LogQueryArgsSchema(KeysetArgsSchema):
    integration_id = ma.fields.String(validate=ma.validate.Length(max=40))
    status = ma.fields.String(validate=ma.validate.OneOf(("success", "error", "pending")))
    event_type = ma.fields.String(validate=ma.validate.Length(max=200))


class AuditEntrySchema(ma.Schema):
    id = ma.fields.Integer()
    actor_key_id = ma.fields.String(allow_none=True)
    actor_user_id = ma.fields.String(allow_none=True)
    action = ma.fields.String()
    resource_type = ma.fields.String()
    resource_id = ma.fields.String(allow_none=True)
    changes = ma.fields.Dict()
    ip = ma.fields.String(allow_none=True)
    request_id = ma.fields.String(allow_none=True)
    created_at = UTCDateTime()


class AuditQueryArgsSchema(KeysetArgsSchema):
    action = ma.fields.String(validate=ma.validate.Length(max=100))
    resource_type = ma.fields.String(validate=ma.validate.Length(max=50))
    resource_id = ma.fields.String(validate=ma.validate.Length(max=200))
    actor_key_id = ma.fields.String(validate=ma.validate.Length(max=40))
    actor_user_id = ma.fields.String(validate=ma.validate.Length(max=40))
    since = UTCDateTime()
    until = UTCDateTime()


LogPageSchema = keyset_page_schema(LogSchema, "LogPage")
AuditPageSchema = keyset_page_schema(AuditEntrySchema, "AuditPage")
