"""The event types Switchboard emits itself, with the JSON Schema of each one's ``data``.

The schemas describe what receivers get (``GET /api/v1/event-types`` lists them) and are held
to that by the test suite, which validates the events its flows emit. They name the fields a
receiver can rely on; objects stay open to fields added later.
"""

from __future__ import annotations

from typing import Any

from app.connectors.contract import EventSpec

_STRING = {"type": "string"}
_TEXT = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}
_MAYBE_TIME = {"type": ["string", "null"], "format": "date-time"}
_INTEGER = {"type": "integer"}
_OBJECT = {"type": "object"}
_STRINGS = {"type": "array", "items": _STRING}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
    }


def _changed(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` plus ``changed``: the names of the fields an update changed."""
    return {
        **schema,
        "required": sorted([*schema["required"], "changed"]),
        "properties": {**schema["properties"], "changed": _STRINGS},
    }


_INTEGRATION = _object(
    {
        "id": _STRING,
        "name": _STRING,
        "type": {"enum": ["sso", "webhook", "api", "notification"]},
        "provider": _STRING,
        "status": {"enum": ["active", "inactive", "error"]},
        "config": _OBJECT,
        "subscriptions": {"type": "array", "items": _OBJECT},
        "created_at": _TIME,
    },
    {
        "description": _STRING,
        "metadata": _OBJECT,
        "allowed_ips": {"type": ["array", "null"], "items": _STRING},
        "updated_at": _TIME,
        "created_by": _TEXT,
    },
)
_API_KEY = _object(
    {
        "id": _STRING,
        "name": _STRING,
        "key_prefix": _STRING,
        "permissions": _STRINGS,
        "rate_limit": _INTEGER,
        "created_at": _TIME,
    },
    {
        "expires_at": _MAYBE_TIME,
        "revoked_at": _MAYBE_TIME,
        "last_used_at": _MAYBE_TIME,
        "created_by": _TEXT,
        "platform": {"type": "boolean"},
    },
)
_WEBHOOK = _object(
    {
        "id": _STRING,
        "url": _STRING,
        "events": _STRINGS,
        "integration_id": _STRING,
        "status": {"enum": ["active", "disabled"]},
        "retry_count": _INTEGER,
        "timeout_ms": _INTEGER,
        "created_at": _TIME,
    },
    {
        "description": _STRING,
        "filter": {"type": ["object", "null"]},
        "headers": {"type": ["array", "null"], "items": _OBJECT},
        "auth": {"type": ["object", "null"]},
        "ordering": {"enum": ["none", "fifo"]},
        "ordering_key": _TEXT,
        "disabled_reason": _TEXT,
        "failing_since": _MAYBE_TIME,
        "updated_at": _TIME,
    },
)
_ALERT = _object(
    {
        "id": _STRING,
        "rule_id": _STRING,
        "rule": _STRING,
        "condition": _TEXT,
        "subject": _STRING,
        "status": {"enum": ["firing", "resolved"]},
        "summary": _STRING,
        "details": _OBJECT,
        "fired_at": _TIME,
        "resolved_at": _MAYBE_TIME,
        "text": _STRING,
    }
)
_TENANT = _object(
    {
        "id": _STRING,
        "name": _STRING,
        "external_id": _STRING,
        "status": {"enum": ["active", "suspended", "deleting"]},
        "quotas": _OBJECT,
        "settings": _OBJECT,
    },
    {"created_at": _TIME, "updated_at": _TIME},
)
_OAUTH = {"integration_id": _STRING}

BUILTIN_EVENT_TYPES: dict[str, EventSpec] = {
    "integration.created": EventSpec("An integration was created.", _INTEGRATION),
    "integration.updated": EventSpec("An integration's fields changed.", _changed(_INTEGRATION)),
    "integration.deleted": EventSpec("An integration was deleted.", _INTEGRATION),
    "api_key.created": EventSpec("An API key was created.", _API_KEY),
    "api_key.revoked": EventSpec("An API key was revoked.", _API_KEY),
    "api_key.rotated": EventSpec("An API key's secret was rotated.", _API_KEY),
    "webhook.created": EventSpec("A webhook endpoint was created.", _WEBHOOK),
    "webhook.updated": EventSpec("A webhook endpoint was changed.", _changed(_WEBHOOK)),
    "webhook.deleted": EventSpec("A webhook endpoint was deleted.", _WEBHOOK),
    "webhook.disabled": EventSpec(
        "A webhook endpoint was disabled: it failed for SWITCHBOARD_WEBHOOK_DISABLE_AFTER or"
        " answered 410 Gone (its deliveries are held until it is enabled again).",
        _object(
            {
                "webhook_id": _STRING,
                "url": _STRING,
                "reason": _STRING,
                "integration_id": _STRING,
                "failing_since": _TIME,
            }
        ),
    ),
    "webhook.test": EventSpec(
        "A test event sent with POST /webhooks/{id}/test.",
        _object({"webhook_id": _STRING, "message": _STRING}),
    ),
    "oauth.connected": EventSpec(
        "An OAuth2 integration was connected (tokens stored).",
        _object(_OAUTH, {"scope": _TEXT}),
    ),
    "oauth.refresh_failed": EventSpec(
        "A token refresh was refused for good: reconnect the integration.",
        _object({**_OAUTH, "message": _STRING}, {"error": _TEXT}),
    ),
    "oauth.revoked": EventSpec(
        "An OAuth2 integration's tokens were revoked and deleted.",
        _object({**_OAUTH, "revoked_at_provider": {"type": "boolean"}}),
    ),
    "alert.fired": EventSpec(
        "An alert rule's condition became true for a subject (see /alert-rules).", _ALERT
    ),
    "alert.resolved": EventSpec("A fired alert's condition is no longer true.", _ALERT),
    "tenant.created": EventSpec(
        "A tenant was created (emitted in the default tenant, the operator's).", _TENANT
    ),
    "tenant.updated": EventSpec(
        "A tenant's name, external_id, quotas or settings changed (default tenant).", _TENANT
    ),
    "tenant.suspended": EventSpec(
        "A tenant was suspended: its keys are refused, its deliveries wait.", _TENANT
    ),
    "tenant.resumed": EventSpec(
        "A suspended tenant was resumed (emitted in the default tenant).", _TENANT
    ),
    "tenant.deleted": EventSpec(
        "A tenant and everything it owned were erased (default tenant).",
        _object({"tenant_id": _STRING, "external_id": _STRING, "name": _STRING, "rows": _OBJECT}),
    ),
}
