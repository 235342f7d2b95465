"""Events: the catalog of event types and ``emit_event``, the outbox's only writer.

``emit_event`` must run inside the caller's database transaction: the event row and one
delivery per matching target are committed together with the change that caused them, and
the dispatcher is woken only after that commit. ``emit_event_alone`` is the same for an event
that is its own change (``POST /events``): on PostgreSQL one statement, committed by itself.
"""

from __future__ import annotations

from typing import Any

import peewee
from flask import current_app

from app.events.outbox import wake_dispatcher
from app.events.routes import event_targets
from app.limits.enforce import usage_buffer
from app.logs.structured import current_request_id
from app.store.bulk import CHUNK, insert_rows, insert_sql
from app.store.db import database
from app.store.models import Delivery, Event, EventType, new_id, utcnow
from app.stream import kinds

BUILTIN_EVENT_TYPES: dict[str, str] = {
    "integration.created": "An integration was created.",
    "integration.updated": "An integration's fields changed.",
    "integration.deleted": "An integration was deleted.",
    "api_key.created": "An API key was created.",
    "api_key.revoked": "An API key was revoked.",
    "api_key.rotated": "An API key's secret was rotated.",
    "webhook.created": "A webhook endpoint was created.",
    "webhook.updated": "A webhook endpoint was changed.",
    "webhook.deleted": "A webhook endpoint was deleted.",
    "webhook.disabled": (
        "A webhook endpoint was disabled: it failed for SWITCHBOARD_WEBHOOK_DISABLE_AFTER or"
        " answered 410 Gone (its deliveries are held until it is enabled again)."
    ),
    "webhook.test": "A test event sent with POST /webhooks/{id}/test.",
    "oauth.connected": "An OAuth2 integration was connected (tokens stored).",
    "oauth.refresh_failed": "A token refresh was refused for good: reconnect the integration.",
    "oauth.revoked": "An OAuth2 integration's tokens were revoked and deleted.",
    "alert.fired": "An alert rule's condition became true for a subject (see /alert-rules).",
    "alert.resolved": "A fired alert's condition is no longer true.",
    "tenant.created": "A tenant was created (emitted in the default tenant, the operator's).",
    "tenant.updated": "A tenant's name, external_id, quotas or settings changed (default tenant).",
    "tenant.suspended": "A tenant was suspended: its keys are refused, its deliveries wait.",
    "tenant.resumed": "A suspended tenant was resumed (emitted in the default tenant).",
    "tenant.deleted": "A tenant and everything it owned were erased (default tenant).",
}


def event_catalog(tenant_id: str) -> dict[str, dict[str, str]]:
    """Every event type ``tenant_id`` knows: built-in, from connector plugins (both global),
    and its own registered through the API."""
    catalog = {
        name: {"name": name, "description": text, "source": "builtin"}
        for name, text in BUILTIN_EVENT_TYPES.items()
    }
    registry = current_app.extensions.get("plugins")
    if registry is not None:
        for name, text in registry.event_types().items():
            catalog.setdefault(name, {"name": name, "description": text, "source": "connector"})
    for row in EventType.of(tenant_id):
        catalog.setdefault(
            row.name, {"name": row.name, "description": row.description, "source": "custom"}
        )
    return catalog


def event_type_source(event_type: str, tenant_id: str) -> str | None:
    """Where ``event_type`` comes from for ``tenant_id`` (``builtin``, ``connector``,
    ``custom``), or None.

    This runs on every publish, so it reads no catalog: built-in and connector types are in
    memory, and a tenant's custom type, once seen in the database, is remembered by this
    process (custom types are never removed but with their whole tenant).
    """
    if event_type in BUILTIN_EVENT_TYPES:
        return "builtin"
    registry = current_app.extensions.get("plugins")
    if registry is not None and event_type in registry.event_types():
        return "connector"
    known: set[tuple[str, str]] = current_app.extensions.setdefault("custom_event_types", set())
    if (tenant_id, event_type) in known:
        return "custom"
    if EventType.of(tenant_id, EventType.id).where(EventType.name == event_type).exists():
        known.add((tenant_id, event_type))
        return "custom"
    return None


def is_valid_pattern(pattern: str, catalog: dict[str, Any]) -> bool:
    """A subscription pattern is a known type, ``*``, or a ``prefix.*`` some type falls under."""
    if pattern == "*" or pattern in catalog:
        return True
    return pattern.endswith(".*") and any(kinds.pattern_matches(pattern, name) for name in catalog)


def emit_event(
    event_type: str,
    data: dict[str, Any],
    *,
    tenant_id: str,
    idempotency_key: str | None = None,
) -> Event:
    """Write an event of ``tenant_id`` and its deliveries (to that tenant's targets only) in
    this transaction; wake the dispatcher on commit."""
    assert database.in_transaction(), "emit_event must run inside database.atomic()"
    event, rows = _outbox_rows(tenant_id, event_type, data, idempotency_key)
    _insert(event, rows)
    kinds.event_published(tenant_id, event.id, event_type, event.created_at, data)
    if rows:
        database.after_commit(lambda: wake_dispatcher(tenant_id))
    return event


def emit_event_alone(event_type: str, data: dict[str, Any], *, tenant_id: str) -> Event:
    """``emit_event`` in a transaction of its own (a custom event published through the API).

    On PostgreSQL the event and its deliveries are one ``INSERT``, which is a transaction by
    itself: no ``BEGIN`` and ``COMMIT`` round trips (or, on the rare publish that needs more
    than one statement, an ordinary transaction).
    """
    if not isinstance(database.obj, peewee.PostgresqlDatabase) or database.in_transaction():
        with database.atomic():
            return emit_event(event_type, data, tenant_id=tenant_id)
    event, rows = _outbox_rows(tenant_id, event_type, data, None)
    if len(rows) > CHUNK:
        with database.atomic():
            return emit_event(event_type, data, tenant_id=tenant_id)
    _insert(event, rows)  # committed when it returns
    kinds.event_published(tenant_id, event.id, event_type, event.created_at, data)
    if rows:
        wake_dispatcher(tenant_id)
    return event


def _outbox_rows(
    tenant_id: str, event_type: str, data: dict[str, Any], idempotency_key: str | None
) -> tuple[Event, list[dict[str, Any]]]:
    """The event (not yet saved) and its delivery rows, one per matching target."""
    event = Event(
        tenant_id=tenant_id,
        type=event_type,
        payload=data,
        idempotency_key=idempotency_key,
        request_id=current_request_id(),
    )
    now = utcnow()
    rows = [dict(target) for target in event_targets(event_type, tenant_id)]
    for row in rows:  # one INSERT for all: give every row the same columns
        row.update(
            id=new_id("dlv"),
            tenant_id=tenant_id,
            event=event.id,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        row.setdefault("webhook", None)
        row.setdefault("integration", None)
        row.setdefault("subscription_index", None)
        row.setdefault("status", "pending")
    event.delivery_count = len(rows)
    return event, rows


def _insert(event: Event, rows: list[dict[str, Any]]) -> None:
    count = usage_buffer().count_tenant
    if database.in_transaction():  # a rolled-back event is no usage
        database.after_commit(lambda: count(event.tenant_id, "events"))
    else:
        count(event.tenant_id, "events")
    event_sql, event_params = insert_sql(Event, [event.__data__])
    if rows and len(rows) <= CHUNK and isinstance(database.obj, peewee.PostgresqlDatabase):
        # One round trip: the event and its deliveries in one statement.
        deliveries_sql, deliveries_params = insert_sql(Delivery, rows)
        database.execute_sql(
            f"WITH event AS ({event_sql}) {deliveries_sql}", event_params + deliveries_params
        )
    else:
        database.execute_sql(event_sql, event_params)
        insert_rows(Delivery, rows)
