"""Schemas for ``/tenants``, ``/usage`` and ``/members``."""

from __future__ import annotations

import marshmallow as ma

from app.limits.quotas import QUOTAS
from app.limits.usage import MAX_DAYS
from app.store import jsoncodec
from app.store.models import ROLES, TENANT_STATUSES
from app.web.api import PageArgsSchema, UTCDateTime, page_schema

MAX_SETTINGS_BYTES = 16 * 1024


def _quota(name: str, minimum: int) -> ma.fields.Integer:
    return ma.fields.Integer(
        strict=True,
        allow_none=True,
        validate=ma.validate.Range(min=minimum, max=1_000_000_000),
        metadata={"description": QUOTAS[name].capitalize() + " (null or missing: unlimited)"},
    )


class QuotasSchema(ma.Schema):
    """A tenant's quotas; a missing or null one is unlimited."""

    requests_per_hour = _quota("requests_per_hour", 1)
    events_per_day = _quota("events_per_day", 0)
    max_webhooks = _quota("max_webhooks", 0)
    max_integrations = _quota("max_integrations", 0)
    max_keys = _quota("max_keys", 0)


def _small_json(value: dict) -> None:
    if len(jsoncodec.dumps(value)) > MAX_SETTINGS_BYTES:
        raise ma.ValidationError(f"must be at most {MAX_SETTINGS_BYTES} bytes of JSON")


class TenantSchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=200))
    external_id = ma.fields.String(
        required=True,
        validate=[
            ma.validate.Length(min=1, max=200),
            ma.validate.Regexp(r"^[^\s\x00-\x1f]+$", error="no spaces or control characters"),
        ],
        metadata={
            "description": "Your own id for this customer (unique): usable wherever a tenant id "
            "is, including the `Switchboard-Tenant` header"
        },
    )
    status = ma.fields.String(
        dump_only=True,
        metadata={
            "description": "`active`, `suspended` or `deleting`: " + ", ".join(TENANT_STATUSES)
        },
    )
    quotas = ma.fields.Nested(QuotasSchema, load_default=dict)
    settings = ma.fields.Dict(
        keys=ma.fields.String(validate=ma.validate.Length(max=100)),
        load_default=dict,
        validate=_small_json,
        metadata={"description": "Free-form settings for your integration code (≤ 16 KiB JSON)"},
    )
    created_at = UTCDateTime(dump_only=True)
    updated_at = UTCDateTime(dump_only=True)


class TenantQueryArgsSchema(PageArgsSchema):
    status = ma.fields.String(validate=ma.validate.OneOf(TENANT_STATUSES))
    q = ma.fields.String(
        validate=ma.validate.Length(min=1, max=200),
        metadata={"description": "Part of the name or external_id"},
    )


TenantPageSchema = page_schema(TenantSchema, "TenantPage")


class ErasureSchema(ma.Schema):
    job_id = ma.fields.String(metadata={"description": "Poll `GET /api/v1/jobs/{job_id}`"})
    tenant = ma.fields.Nested(TenantSchema)


class UsageArgsSchema(ma.Schema):
    days = ma.fields.Integer(
        load_default=30,
        validate=ma.validate.Range(min=1, max=MAX_DAYS),
        metadata={"description": f"How many UTC days, today included (1–{MAX_DAYS})"},
    )


class UsageDaySchema(ma.Schema):
    date = ma.fields.String(metadata={"description": "The UTC day (YYYY-MM-DD)"})
    requests = ma.fields.Integer(metadata={"description": "API requests acting in the tenant"})
    events = ma.fields.Integer(metadata={"description": "Events written to its outbox"})
    deliveries_succeeded = ma.fields.Integer()
    deliveries_failed = ma.fields.Integer(metadata={"description": "Failed for good"})
    gateway_calls = ma.fields.Integer()


class UsageSchema(ma.Schema):
    tenant_id = ma.fields.String()
    quotas = ma.fields.Nested(QuotasSchema)
    days = ma.fields.List(
        ma.fields.Nested(UsageDaySchema), metadata={"description": "Oldest first"}
    )


class MemberSchema(ma.Schema):
    user_id = ma.fields.String(dump_only=True)
    email = ma.fields.Email(required=True, validate=ma.validate.Length(max=320))
    role = ma.fields.String(required=True, validate=ma.validate.OneOf(ROLES))
    password = ma.fields.String(
        load_only=True,
        validate=ma.validate.Length(min=8, max=72),
        metadata={"description": "For a new user: lets them log in with a password"},
    )
    has_password = ma.fields.Boolean(dump_only=True)
    created_at = UTCDateTime(dump_only=True)


class MemberUpdateSchema(ma.Schema):
    role = ma.fields.String(required=True, validate=ma.validate.OneOf(ROLES))


MemberPageSchema = page_schema(MemberSchema, "MemberPage")


RETENTION_KINDS = ("events", "deliveries", "logs", "audit")


def _days(kind: str) -> ma.fields.Integer:
    return ma.fields.Integer(
        strict=True,
        allow_none=True,
        validate=ma.validate.Range(min=0, max=36500),
        metadata={"description": f"Days to keep {kind}; null: the global period"},
    )


class RetentionUpdateSchema(ma.Schema):
    """The periods a tenant chooses; a kind left out keeps its choice, null resets it."""

    events = _days("events")
    deliveries = _days("deliveries (with their attempts)")
    logs = _days("integration logs")
    audit = _days("audit entries")


class RetentionKindSchema(ma.Schema):
    days = ma.fields.Integer(
        metadata={"description": "Days kept now (0: forever): the choice within the bounds"}
    )
    chosen = ma.fields.Integer(
        allow_none=True, metadata={"description": "This tenant's choice, or null"}
    )
    default = ma.fields.Integer(metadata={"description": "The global period (0: forever)"})
    min = ma.fields.Integer(metadata={"description": "The least a tenant may choose"})
    max = ma.fields.Integer(metadata={"description": "The most a tenant may choose"})


class RetentionSchema(ma.Schema):
    events = ma.fields.Nested(RetentionKindSchema)
    deliveries = ma.fields.Nested(RetentionKindSchema)
    logs = ma.fields.Nested(RetentionKindSchema)
    audit = ma.fields.Nested(RetentionKindSchema)
