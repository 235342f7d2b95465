"""Events: the catalog of event types and ``emit_event``, the outbox's only writer.

``emit_event`` must run inside the caller's database transaction: the event row and one
delivery per matching target (whose filter the payload passes) are committed together with
the change that caused them, and the dispatcher is woken only after that commit.
``emit_event_alone`` is the same for an event that is its own change (``POST /events``): on
PostgreSQL one statement, committed by itself. A fifo webhook's delivery enters its queue and
becomes its head once committed, if nothing is before it (``app.events.fifo``). A caller that
already read the routes (to check the payload against its type's schema) passes them along.
"""

from __future__ import annotations

from typing import Any

import peewee
from flask import current_app

from app.connectors.contract import EventSpec
from app.events import fifo
from app.events.builtin_types import BUILTIN_EVENT_TYPES
from app.events.outbox import wake_dispatcher
from app.events.routes import Routes, current_routes
from app.limits.enforce import usage_buffer
from app.logs.structured import current_request_id
from app.store.bulk import CHUNK, insert_rows, insert_sql
from app.store.db import database
from app.store.models import Delivery, Event, EventType, new_id, utcnow
from app.stream import kinds


def _entry(name: str, spec: EventSpec, source: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": spec.description,
        "source": source,
        "schema": spec.schema,
        "examples": list(spec.examples),
    }


def custom_type_entry(row: EventType) -> dict[str, Any]:
    """A tenant's own event type as the catalog lists it."""
    spec = EventSpec(row.description, row.payload_schema, tuple(row.examples or ()))
    return {**_entry(row.name, spec, "custom"), "created_at": row.created_at}


def event_catalog(tenant_id: str) -> dict[str, dict[str, Any]]:
    """Every event type ``tenant_id`` knows, with its payload schema and examples: built-in,
    from connector plugins (both global), and its own registered through the API."""
    catalog = {name: _entry(name, spec, "builtin") for name, spec in BUILTIN_EVENT_TYPES.items()}
    registry = current_app.extensions.get("plugins")
    if registry is not None:
        for name, spec in registry.event_specs().items():
            catalog.setdefault(name, _entry(name, spec, "connector"))
    for row in EventType.of(tenant_id):
        catalog.setdefault(row.name, custom_type_entry(row))
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
    routes: Routes | None = None,
) -> Event:
    """Write an event of ``tenant_id`` and its deliveries (to that tenant's targets only) in
    this transaction; wake the dispatcher on commit."""
    assert database.in_transaction(), "emit_event must run inside database.atomic()"
    routes = routes or current_routes()
    event, rows = _outbox_rows(routes, tenant_id, event_type, data, idempotency_key)
    _write(event, rows)
    return event


def emit_event_alone(
    event_type: str, data: dict[str, Any], *, tenant_id: str, routes: Routes | None = None
) -> Event:
    """``emit_event`` in a transaction of its own (a custom event published through the API).

    On PostgreSQL the event and its deliveries are one ``INSERT``, which is a transaction by
    itself: no ``BEGIN`` and ``COMMIT`` round trips (or, on the rare publish that needs more
    than one statement, an ordinary transaction). Work for after the commit then runs at once.
    """
    routes = routes or current_routes()
    event, rows = _outbox_rows(routes, tenant_id, event_type, data, None)
    one_statement = (
        isinstance(database.obj, peewee.PostgresqlDatabase)
        and not database.in_transaction()
        and len(rows) <= CHUNK
    )
    if one_statement:
        _write(event, rows)
    else:
        with database.atomic():
            _write(event, rows)
    return event


def _write(event: Event, rows: list[dict[str, Any]]) -> None:
    """Insert the event and its deliveries (in this transaction, if one is open); fifo ones
    enter their queues ``queued`` and, once committed, each whose queue has no head becomes
    it (``app.events.fifo``). The dispatcher is woken on commit."""
    tenant_id = str(event.tenant_id)
    queues: dict[str, set[str]] = {}
    for row in rows:
        if row["ordering_key"] is not None:
            row["status"] = "queued"
            queues.setdefault(row["webhook"], set()).add(row["ordering_key"])
    _insert(event, rows)
    kinds.event_published(tenant_id, event.id, event.type, event.created_at, event.payload)
    for webhook_id, keys in queues.items():
        fifo.promote_after_commit(tenant_id, webhook_id, keys)
    if rows:
        database.after_commit(lambda: wake_dispatcher(tenant_id))


def _outbox_rows(
    routes: Routes,
    tenant_id: str,
    event_type: str,
    data: dict[str, Any],
    idempotency_key: str | None,
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
    rows = routes.deliveries(event_type, tenant_id, data)
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
