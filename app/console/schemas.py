"""Schemas of ``/portal-sessions``."""

from __future__ import annotations

import marshmallow as ma

from app.web.api import UTCDateTime
from app.web.constraints import HttpUrl

MAX_EXPIRES_IN = 24 * 3600


class ThemeSchema(ma.Schema):
    """How the portal looks: a logo and an accent colour."""

    logo_url = HttpUrl(metadata={"description": "An image shown in the portal's header"})
    accent = ma.fields.String(
        validate=ma.validate.Regexp(r"^#[0-9a-fA-F]{6}$", error="a colour such as #3355ff"),
        metadata={"description": "Accent colour, `#rrggbb`"},
    )


class PortalSessionSchema(ma.Schema):
    """A request for a portal link for one tenant."""

    tenant = ma.fields.String(
        validate=ma.validate.Length(min=1, max=200),
        metadata={
            "description": "The tenant's id or external_id (platform keys; a tenant key may "
            "only name its own tenant, or leave it out)"
        },
    )
    read_only = ma.fields.Boolean(
        load_default=False,
        metadata={"description": "Show everything, change nothing"},
    )
    expires_in = ma.fields.Integer(
        strict=True,
        load_default=3600,
        validate=ma.validate.Range(min=60, max=MAX_EXPIRES_IN),
        metadata={"description": "Seconds the session lasts once opened (60 to 86400)"},
    )
    return_url = HttpUrl(
        metadata={
            "description": "Where the portal's back link goes: an origin listed in "
            "SWITCHBOARD_RETURN_TO_ORIGINS"
        },
    )
    theme = ma.fields.Nested(ThemeSchema, metadata={"description": "Overrides the tenant's"})


class PortalSessionCreatedSchema(ma.Schema):
    """The single-use link to give the user's browser."""

    id = ma.fields.String(metadata={"description": "Revoke with DELETE /portal-sessions/{id}"})
    url = ma.fields.String(
        metadata={"description": "Opens the portal once; valid for 5 minutes before opening"}
    )
    link_expires_at = UTCDateTime()
    expires_at = UTCDateTime(metadata={"description": "When the session ends at the latest"})
    tenant_id = ma.fields.String()
    read_only = ma.fields.Boolean()
