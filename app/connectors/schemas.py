"""Schemas for ``/connectors`` and ``/jobs``."""

from __future__ import annotations

import marshmallow as ma

from app.web.api import UTCDateTime


class ConnectorSchema(ma.Schema):
    name = ma.fields.String()
    plugin = ma.fields.String(metadata={"description": "Entry-point name of the plugin"})
    status = ma.fields.String(metadata={"description": "loaded | error"})
    error = ma.fields.String(allow_none=True)
    version = ma.fields.String(allow_none=True)
    distribution = ma.fields.String(allow_none=True, metadata={"description": "Installed package"})
    distribution_version = ma.fields.String(allow_none=True)
    title = ma.fields.String()
    type = ma.fields.String()
    description = ma.fields.String()
    config_schema = ma.fields.Dict(metadata={"description": "JSON Schema; writeOnly = secret"})
    event_types = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())
    actions = ma.fields.Dict(metadata={"description": "name → {description, input_schema}"})
    inbound = ma.fields.Boolean(metadata={"description": "Accepts /api/v1/inbound requests"})


class ConnectorListSchema(ma.Schema):
    items = ma.fields.List(ma.fields.Nested(ConnectorSchema))
    total = ma.fields.Integer()


class JobSchema(ma.Schema):
    id = ma.fields.String()
    status = ma.fields.String(
        metadata={"description": "queued | started | deferred | scheduled | finished | failed"}
    )
    integration_id = ma.fields.String(
        allow_none=True, metadata={"description": "The integration whose action runs (if any)"}
    )
    action = ma.fields.String(
        metadata={"description": "The connector action, or `tenant.erase` (a tenant's erasure)"}
    )
    result = ma.fields.Raw(
        allow_none=True, metadata={"description": "The finished job's result: a JSON object"}
    )
    error = ma.fields.String(
        allow_none=True,
        metadata={"description": "Why the last attempt failed (or the result is not shown)"},
    )
    attempts = ma.fields.Integer()
    enqueued_at = UTCDateTime(allow_none=True)
    started_at = UTCDateTime(allow_none=True)
    ended_at = UTCDateTime(allow_none=True)
