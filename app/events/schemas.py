"""Schemas for ``/events`` and ``/event-types``."""

from __future__ import annotations

from typing import Any

import marshmallow as ma

from app.events.filters import DOTTED_PATH
from app.web.api import UTCDateTime
from app.web.constraints import NUL_FREE
from app.web.keyset import KeysetArgsSchema, keyset_page_schema

EVENT_TYPE_NAME = r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$"


def _schema_field(**kwargs: Any) -> ma.fields.Raw:
    return ma.fields.Raw(
        allow_none=True,
        metadata={
            "description": "JSON Schema (2020-12) of the payload (`data`): publishing an event "
            "that breaks it is a 422 listing each failure by JSON pointer. Only local "
            "references (`#/$defs/…`); at most 64 KiB",
            "type": ["object", "boolean"],
        },
        **kwargs,
    )


def _examples_field(**kwargs: Any) -> ma.fields.List:
    return ma.fields.List(
        ma.fields.Dict(),
        validate=ma.validate.Length(max=10),
        metadata={"description": "Example payloads (`data`), each valid against `schema`"},
        **kwargs,
    )


class EventTypeSchema(ma.Schema):
    name = ma.fields.String(
        required=True,
        validate=[
            ma.validate.Length(max=200),
            ma.validate.Regexp(EVENT_TYPE_NAME, error="must look like `order.paid`"),
        ],
    )
    description = ma.fields.String(load_default="", validate=ma.validate.Length(max=1000))
    schema = _schema_field(load_default=None)
    examples = _examples_field(load_default=list)
    source = ma.fields.String(
        dump_only=True, metadata={"description": "builtin, connector, or custom"}
    )


class EventTypeUpdateSchema(ma.Schema):
    description = ma.fields.String(validate=ma.validate.Length(max=1000))
    schema = _schema_field()
    examples = _examples_field()


class EventTypeListSchema(ma.Schema):
    items = ma.fields.List(ma.fields.Nested(EventTypeSchema))
    total = ma.fields.Integer()


class PublishSchema(ma.Schema):
    type = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=200))
    data = ma.fields.Dict(required=True, metadata={"description": "Event payload (≤ 256 KiB)"})


class PublishedSchema(ma.Schema):
    id = ma.fields.String(metadata={"description": "Event id: the receivers' webhook-id"})
    deliveries = ma.fields.Integer(metadata={"description": "Deliveries queued for it"})
    duplicate = ma.fields.Boolean(metadata={"description": "True for an idempotent replay"})


class EventSchema(ma.Schema):
    id = ma.fields.String(metadata={"description": "The receivers' webhook-id"})
    type = ma.fields.String()
    data = ma.fields.Method(
        "_data",
        metadata={
            "description": "The payload; null once erased",
            "type": ["object", "null"],
        },
    )
    erased_at = UTCDateTime(
        allow_none=True,
        metadata={"description": "When its payload was erased (DELETE /events/{id}, /erasure)"},
    )
    request_id = ma.fields.String(
        allow_none=True, metadata={"description": "The API request that published it"}
    )
    created_at = UTCDateTime()

    def _data(self, event: Any) -> Any:
        return None if event.erased_at is not None else event.payload


class EventErasureSchema(ma.Schema):
    match = ma.fields.Dict(
        required=True,
        keys=ma.fields.String(
            validate=ma.validate.Length(min=1, max=200),
            metadata={"pattern": DOTTED_PATH},  # checked by parse_path, with its own message
        ),
        metadata={
            "minProperties": 1,
            "additionalProperties": {
                "type": ["string", "number", "boolean", "null"],
                "pattern": NUL_FREE,
            },
            "propertyNames": {"minLength": 1, "maxLength": 200},
            "description": "Dotted paths in the body and the value each must equal, e.g. "
            '`{"data.customer.email": "ann@example.com"}` (all must match; an array holding '
            "the value matches)",
        },
    )
    since = UTCDateTime(
        metadata={"description": "Only events published since (RFC 3339); default: all"}
    )


class EventErasureStartedSchema(ma.Schema):
    job_id = ma.fields.String(
        metadata={"description": "Poll `GET /api/v1/jobs/{job_id}`: its result counts the erased"}
    )


class EventQueryArgsSchema(KeysetArgsSchema):
    type = ma.fields.String(validate=ma.validate.Length(max=200))
    since = UTCDateTime()
    until = UTCDateTime()


EventPageSchema = keyset_page_schema(EventSchema, "EventPage")
