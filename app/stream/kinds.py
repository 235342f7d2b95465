"""What the live stream announces: one function per kind, each with the scope that sees it.

Every entry belongs to one tenant, and only streams acting in that tenant see it. Within it, a
key sees an entry when it holds the entry's scope (``admin`` holds all), exactly as it could
read the same facts through the REST API:

- ``event.published`` — an event entered the outbox. ``integration.*`` events need
  ``integrations:read``, ``api_key.*`` ``admin`` (they name every user's keys, while
  ``keys:read`` lists only its owner's), ``alert.*`` ``alerts:read``, ``tenant.*`` (the
  operator's events, in the default tenant) ``admin``, every other event (the ones webhooks
  carry) ``webhooks:read``.
- ``delivery.attempted`` — an attempt and its outcome (``succeeded``, ``retrying``, ``failed``,
  ``held``): ``webhooks:read`` for webhooks, ``integrations:read`` for subscribed actions.
- ``integration.status_changed`` and ``job.state_changed`` (connector action jobs:
  ``queued``, ``started``, ``finished``, ``retrying``, ``failed``) — ``integrations:read``.
- ``log.created`` — an integration log entry (without logged bodies) — ``logs:read``.
- ``alert.fired`` and ``alert.resolved`` — ``alerts:read``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from app.logs.bodies import without_bodies
from app.stream.publish import publish

_EVENT_FAMILY_SCOPES = {
    "integration": "integrations:read",
    "api_key": "admin",
    "alert": "alerts:read",
    "tenant": "admin",
}


def pattern_matches(pattern: str, name: str) -> bool:
    """The one wildcard grammar of event types and stream kinds: ``*`` matches everything,
    ``prefix.*`` a whole family, anything else exactly."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return name.startswith(pattern[:-1])
    return pattern == name


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value is not None else None


def event_scope(event_type: str) -> str:
    """The scope that sees an event of ``event_type``."""
    return _EVENT_FAMILY_SCOPES.get(event_type.split(".", 1)[0], "webhooks:read")


def hidden_event_families(can_see: Callable[[str], bool]) -> list[str]:
    """Event-type families (``api_key``…) whose scope ``can_see`` says the caller lacks."""
    return [family for family, scope in _EVENT_FAMILY_SCOPES.items() if not can_see(scope)]


def event_published(
    tenant_id: str, event_id: str, event_type: str, created_at: datetime, payload: dict[str, Any]
) -> None:
    """An event was written to the outbox."""
    data = payload if isinstance(payload, dict) else {}
    integration_id = data.get("integration_id") if event_type.startswith("webhook.") else None
    if event_type.startswith("integration."):
        integration_id = data.get("id")
    publish(
        "event.published",
        {"id": event_id, "type": event_type, "created_at": _iso(created_at), "data": payload},
        tenant_id=tenant_id,
        scope=event_scope(event_type),
        integration_id=integration_id if isinstance(integration_id, str) else None,
        webhook_id=data.get("webhook_id") if isinstance(data.get("webhook_id"), str) else None,
        event_type=event_type,
    )


def delivery_attempted(
    *,
    tenant_id: str,
    delivery_id: str,
    event_id: str,
    event_type: str,
    webhook_id: str | None,
    integration_id: str | None,
    attempt: int,
    status: str,
    status_code: int | None,
    error: str | None,
    response_time_ms: float,
    next_attempt_at: datetime | None,
) -> None:
    """A delivery attempt was recorded with its outcome."""
    publish(
        "delivery.attempted",
        {
            "delivery_id": delivery_id,
            "event_id": event_id,
            "event_type": event_type,
            "webhook_id": webhook_id,
            "integration_id": integration_id,
            "attempt": attempt,
            "status": status,
            "status_code": status_code,
            "error": error,
            "response_time_ms": round(response_time_ms, 2),
            "next_attempt_at": _iso(next_attempt_at),
        },
        tenant_id=tenant_id,
        scope="webhooks:read" if webhook_id else "integrations:read",
        integration_id=integration_id,
        webhook_id=webhook_id,
        event_type=event_type,
    )


def integration_status_changed(
    tenant_id: str, integration_id: str, previous: str, status: str
) -> None:
    """An integration's status changed (through the API or a test)."""
    if previous == status:
        return
    publish(
        "integration.status_changed",
        {"integration_id": integration_id, "status": status, "previous_status": previous},
        tenant_id=tenant_id,
        scope="integrations:read",
        integration_id=integration_id,
    )


def job_state_changed(
    tenant_id: str,
    job_id: str,
    integration_id: str,
    action: str,
    state: str,
    error: str | None = None,
) -> None:
    """A connector action job was queued, started, finished, will retry, or failed."""
    publish(
        "job.state_changed",
        {
            "job_id": job_id,
            "integration_id": integration_id,
            "action": action,
            "state": state,
            "error": error,
        },
        tenant_id=tenant_id,
        scope="integrations:read",
        integration_id=integration_id,
    )


def log_created(row: dict[str, Any]) -> None:
    """An integration log entry was written (``row`` as inserted, its ``tenant_id`` included)."""
    publish(
        "log.created",
        {
            "integration_id": row.get("integration_id"),
            "event_type": row.get("event_type"),
            "status": row.get("status"),
            "error_message": row.get("error_message"),
            "response_time_ms": row.get("response_time_ms"),
            "event_data": without_bodies(row.get("event_data")),
        },
        tenant_id=row["tenant_id"],
        scope="logs:read",
        integration_id=row.get("integration_id"),
    )


def alert_changed(tenant_id: str, kind: str, firing: dict[str, Any]) -> None:
    """An alert fired (``alert.fired``) or resolved (``alert.resolved``)."""
    publish("alert." + kind, firing, tenant_id=tenant_id, scope="alerts:read")
