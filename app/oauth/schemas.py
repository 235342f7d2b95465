"""Schemas for OAuth2 connections and SSO login."""

from __future__ import annotations

import marshmallow as ma

from app.auth.schemas import LoginResultSchema
from app.web.api import UTCDateTime, page_schema
from app.web.constraints import HttpUrl

_RETURN_TO = {
    "description": "Where the browser goes afterwards; its origin must be listed in "
    "SWITCHBOARD_RETURN_TO_ORIGINS"
}


class AuthorizeRequestSchema(ma.Schema):
    return_to = HttpUrl(load_default=None, allow_none=True, metadata=_RETURN_TO)


class AuthorizeResultSchema(ma.Schema):
    authorization_url = ma.fields.String(
        metadata={
            "description": "Open it once in the user's browser: a single-use link to "
            "`/oauth/start` that binds the browser and redirects to the provider"
        }
    )
    state = ma.fields.String(metadata={"description": "Single-use, bound to this integration"})
    expires_at = UTCDateTime(metadata={"description": "The state is refused after this"})


class ConnectionSchema(ma.Schema):
    connected = ma.fields.Boolean()
    token_type = ma.fields.String()
    scope = ma.fields.String(allow_none=True)
    expires_at = UTCDateTime(allow_none=True, metadata={"description": "Access token expiry"})
    has_refresh_token = ma.fields.Boolean()


class RevokeResultSchema(ma.Schema):
    revoked_at_provider = ma.fields.Boolean()
    provider_error = ma.fields.String(
        allow_none=True, metadata={"description": "Why the provider did not revoke, if it did not"}
    )


class StartArgsSchema(ma.Schema):
    ticket = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=200))


class CallbackArgsSchema(ma.Schema):
    """What the provider appends to the redirect URI (unknown parameters are ignored)."""

    class Meta:
        unknown = ma.EXCLUDE

    state = ma.fields.String(validate=ma.validate.Length(max=200))
    code = ma.fields.String(validate=ma.validate.Length(max=4000))
    error = ma.fields.String(validate=ma.validate.Length(max=200))
    error_description = ma.fields.String(validate=ma.validate.Length(max=2000))


class SsoLoginArgsSchema(ma.Schema):
    return_to = HttpUrl(
        metadata={
            **_RETURN_TO,
            "description": _RETURN_TO["description"]
            + "; the session key arrives in its fragment (#key=…&key_id=…&expires_at=…)",
        },
    )


class SsoUserSchema(ma.Schema):
    id = ma.fields.String()
    email = ma.fields.String()
    role = ma.fields.String()


class SsoLoginResultSchema(LoginResultSchema):
    user = ma.fields.Nested(SsoUserSchema)
    provisioned = ma.fields.Boolean(metadata={"description": "The user was created by this login"})
    linked = ma.fields.Boolean(
        metadata={"description": "An existing account was signed in by email for the first time"}
    )


class SsoDiscoverArgsSchema(ma.Schema):
    email = ma.fields.String(
        required=True,
        validate=ma.validate.Length(min=3, max=320),
        metadata={"description": "The address the person signs in with"},
    )


class SsoTenantSchema(ma.Schema):
    id = ma.fields.String()
    external_id = ma.fields.String()
    name = ma.fields.String()


class SsoDiscoverySchema(ma.Schema):
    integration_id = ma.fields.String()
    login_url = ma.fields.String(metadata={"description": "Open it in the browser to sign in"})
    tenant = ma.fields.Nested(SsoTenantSchema)


class SsoIdentitySchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    user_id = ma.fields.String(
        required=True,
        validate=ma.validate.Length(min=1, max=64),
        metadata={"description": "A member of this tenant"},
    )
    subject = ma.fields.String(
        required=True,
        validate=ma.validate.Length(min=1, max=255),
        metadata={
            "description": "The ID token's `sub` at the integration's issuer (a refused login's "
            "audit entry `auth.sso_login_failed` names it)"
        },
    )
    email = ma.fields.String(dump_only=True)
    issuer = ma.fields.String(dump_only=True)
    created_at = UTCDateTime(dump_only=True)
    last_login_at = UTCDateTime(dump_only=True)


SsoIdentityPageSchema = page_schema(SsoIdentitySchema, "SsoIdentityPage")
