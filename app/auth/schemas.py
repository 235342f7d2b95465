"""Schemas for login and whoami."""

from __future__ import annotations

import marshmallow as ma

from app.web.api import UTCDateTime


class LoginSchema(ma.Schema):
    email = ma.fields.Email(required=True, validate=ma.validate.Length(max=320))
    password = ma.fields.String(required=True, load_only=True, validate=ma.validate.Length(max=72))
    device_token = ma.fields.String(
        load_only=True,
        load_default=None,
        validate=ma.validate.Length(max=100),
        metadata={"description": "From an earlier login: exempts this client from lock-outs"},
    )
    tenant = ma.fields.String(
        load_default=None,
        validate=ma.validate.Length(min=1, max=200),
        metadata={
            "description": "The tenant (id or external_id) to sign in to, for users of several; "
            "default: the first one they joined"
        },
    )


class SeatSchema(ma.Schema):
    id = ma.fields.String()
    external_id = ma.fields.String()
    name = ma.fields.String()
    role = ma.fields.String()


class LoginResultSchema(ma.Schema):
    key = ma.fields.String(metadata={"description": "New API key, shown only this once"})
    key_id = ma.fields.String()
    expires_at = UTCDateTime()
    scopes = ma.fields.List(ma.fields.String())
    tenant_id = ma.fields.String(metadata={"description": "The tenant the key acts in"})
    platform = ma.fields.Boolean(
        metadata={"description": "A platform key (platform admins): may name other tenants"}
    )
    tenants = ma.fields.List(
        ma.fields.Nested(SeatSchema),
        metadata={"description": "Every tenant this user may sign in to (choose with `tenant`)"},
    )
    device_token = ma.fields.String(
        allow_none=True,
        metadata={"description": "Send with later logins of this user from this client"},
    )


class OwnerSchema(ma.Schema):
    id = ma.fields.String()
    email = ma.fields.String()
    role = ma.fields.String(
        allow_none=True, metadata={"description": "The owner's role in the key's tenant"}
    )
    platform_admin = ma.fields.Boolean()


class TenantRefSchema(ma.Schema):
    id = ma.fields.String()
    external_id = ma.fields.String()
    name = ma.fields.String()
    status = ma.fields.String()


class WhoAmISchema(ma.Schema):
    id = ma.fields.String(metadata={"description": "The calling key's id"})
    name = ma.fields.String()
    key_prefix = ma.fields.String()
    scopes = ma.fields.List(ma.fields.String())
    expires_at = UTCDateTime(allow_none=True)
    platform = ma.fields.Boolean(metadata={"description": "A platform (operator) key"})
    tenant = ma.fields.Nested(
        TenantRefSchema, metadata={"description": "The tenant this request acts in"}
    )
    owner = ma.fields.Nested(OwnerSchema, allow_none=True)
