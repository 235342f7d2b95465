"""Schemas of ``/stream`` and ``/stream/tokens``."""

from __future__ import annotations

import marshmallow as ma

from app.web.api import UTCDateTime


class StreamArgsSchema(ma.Schema):
    """Filters and resume point of a stream."""

    types = ma.fields.String(
        metadata={
            "description": "Comma-separated patterns over the stream event name, e.g. "
            "`delivery.*,integration.status_changed` (default: everything visible)"
        }
    )
    event_types = ma.fields.String(
        metadata={
            "description": "Comma-separated patterns over the domain event type (`order.*`); "
            "only entries about such an event pass"
        }
    )
    integration_id = ma.fields.String(validate=ma.validate.Length(max=40))
    webhook_id = ma.fields.String(validate=ma.validate.Length(max=40))
    token = ma.fields.String(
        metadata={"description": "A stream token (for EventSource, which cannot send headers)"}
    )
    last_event_id = ma.fields.String(
        validate=ma.validate.Regexp(r"^$|^[0-9]{1,20}-[0-9]{1,20}$"),
        metadata={
            "description": "Resume after this entry id, like the `Last-Event-ID` header "
            "(which wins when both are sent)"
        },
    )


class StreamTokenSchema(ma.Schema):
    """A single-use stream token."""

    token = ma.fields.String(metadata={"description": "Valid once, for `expires_in` seconds"})
    url = ma.fields.String(metadata={"description": "The stream URL with the token, to open"})
    expires_in = ma.fields.Integer()
    expires_at = UTCDateTime()
