"""Schemas for ``/api-keys``."""

from __future__ import annotations

from typing import Any

import marshmallow as ma

from app.config import ALL_SCOPES
from app.store.models import utcnow
from app.web.api import PageArgsSchema, UTCDateTime, page_schema
from app.web.constraints import IpNetwork


class ApiKeySchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=200))
    key_prefix = ma.fields.String(
        dump_only=True, metadata={"description": "Shown to identify the key; not a secret"}
    )
    permissions = ma.fields.List(
        ma.fields.String(validate=ma.validate.OneOf(ALL_SCOPES)),
        load_default=list,
        metadata={"description": "Scopes: " + ", ".join(ALL_SCOPES)},
    )
    rate_limit = ma.fields.Integer(
        strict=True,
        load_default=1000,
        validate=ma.validate.Range(min=1, max=100_000_000),
        metadata={"description": "Requests per hour"},
    )
    allowed_ips = ma.fields.List(
        IpNetwork(),
        allow_none=True,
        load_default=None,
        validate=ma.validate.Length(max=100),
        metadata={"description": "CIDR allow-list; other client addresses get 403"},
    )
    expires_at = UTCDateTime(allow_none=True, load_default=None)
    last_used_at = UTCDateTime(dump_only=True, allow_none=True)
    revoked_at = UTCDateTime(dump_only=True, allow_none=True)
    created_at = UTCDateTime(dump_only=True)
    created_by = ma.fields.String(attribute="created_by_id", dump_only=True, allow_none=True)
    tenant_id = ma.fields.String(
        dump_only=True, metadata={"description": "The tenant the key belongs to (acts in)"}
    )
    platform = ma.fields.Boolean(
        load_default=False,
        metadata={
            "description": "A platform (operator) key: may manage tenants and act on any of them "
            "with the `Switchboard-Tenant` header. Only a platform key may create one"
        },
    )
    previous_valid_until = UTCDateTime(
        dump_only=True,
        allow_none=True,
        metadata={"description": "Until when the pre-rotation secret still works"},
    )

    @ma.validates("expires_at")
    def _future(self, value: Any, data_key: str) -> None:
        if value is not None and value <= utcnow():
            raise ma.ValidationError("must be in the future")


class ApiKeyCreatedSchema(ApiKeySchema):
    key = ma.fields.String(
        dump_only=True, metadata={"description": "The secret: shown only in this response"}
    )


class ApiKeyQueryArgsSchema(PageArgsSchema):
    include_revoked = ma.fields.Boolean(load_default=False)


class RotateSchema(ma.Schema):
    grace_period_seconds = ma.fields.Integer(
        strict=True,
        load_default=3600,
        validate=ma.validate.Range(min=0, max=30 * 24 * 3600),
        metadata={"description": "How long the old secret keeps working (0–30 days)"},
    )


ApiKeyPageSchema = page_schema(ApiKeySchema, "ApiKeyPage")


USAGE_WINDOWS = {"24h": 24, "7d": 7 * 24}


class UsageArgsSchema(ma.Schema):
    window = ma.fields.String(
        load_default="24h",
        validate=ma.validate.OneOf(tuple(USAGE_WINDOWS)),
        metadata={"description": "How far back: `24h` (24 hourly buckets) or `7d` (168)"},
    )


def _usage_count_fields() -> dict[str, ma.fields.Field]:
    """Fresh counter fields shared by usage buckets and totals."""
    return {
        "requests": ma.fields.Integer(
            metadata={"description": "All responses (sum of the classes)"}
        ),
        "2xx": ma.fields.Integer(),
        "3xx": ma.fields.Integer(),
        "4xx": ma.fields.Integer(),
        "5xx": ma.fields.Integer(),
        "rate_limited": ma.fields.Integer(
            metadata={"description": "Requests refused with 429 (also counted in `4xx`)"}
        ),
        "gateway_bytes": ma.fields.Integer(metadata={"description": "Response bytes proxied"}),
    }


UsageTotalsSchema = ma.Schema.from_dict(_usage_count_fields(), name="UsageTotals")
UsageBucketSchema = ma.Schema.from_dict(
    {
        "hour": ma.fields.String(metadata={"description": "Start of the hour (UTC, ISO 8601)"}),
        **_usage_count_fields(),
    },
    name="UsageBucket",
)


class ApiKeyUsageSchema(ma.Schema):
    key_id = ma.fields.String()
    window = ma.fields.String()
    buckets = ma.fields.List(
        ma.fields.Nested(UsageBucketSchema),
        metadata={"description": "Hourly buckets, oldest first; the last is the current hour"},
    )
    totals = ma.fields.Nested(UsageTotalsSchema)
