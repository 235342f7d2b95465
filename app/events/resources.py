"""``/events`` (publish) and ``/event-types`` (the catalog)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import peewee
from flask import request

from app.audit import record_audit
from app.auth.access import current_principal, current_tenant_id
from app.connectors.extension import get_registry
from app.connectors.payloads import payload_schema_errors
from app.events.builtin_types import BUILTIN_EVENT_TYPES
from app.events.catalog import (
    custom_type_entry,
    emit_event,
    emit_event_alone,
    event_catalog,
    event_type_source,
)
from app.events.erasure import erase_events, match_problems, start_matching_erasure
from app.events.routes import Routes, current_routes
from app.events.schemas import (
    EventErasureSchema,
    EventErasureStartedSchema,
    EventPageSchema,
    EventQueryArgsSchema,
    EventSchema,
    EventTypeListSchema,
    EventTypeSchema,
    EventTypeUpdateSchema,
    PublishedSchema,
    PublishSchema,
)
from app.limits.quotas import count_event
from app.store.db import database
from app.store.models import Delivery, Event, EventType, utcnow
from app.stream.kinds import hidden_event_families
from app.web.api import Blueprint, links_to
from app.web.keyset import paginate_keyset
from app.web.problems import Problem

blp = Blueprint("events", __name__, url_prefix="/api/v1", description="Events")

MAX_EVENT_BYTES = 256 * 1024
IDEMPOTENCY_WINDOW = timedelta(hours=24)


@blp.route("/event-types", methods=["GET"])
@blp.auth(None)
@blp.response(200, EventTypeListSchema)
def list_event_types() -> dict[str, Any]:
    """List every event type: built-in, from connectors, and this tenant's custom ones."""
    items = sorted(event_catalog(current_tenant_id()).values(), key=lambda item: item["name"])
    return {"items": items, "total": len(items)}


def _check_payload_schema(schema: Any, examples: list[Any] | None) -> None:
    """422 naming each place of a broken schema or an example it refuses."""
    errors = payload_schema_errors(schema, examples)
    if errors:
        where = next(iter(errors))
        raise Problem(422, f"Invalid `{where}`: {errors[where][0]}", errors=errors)


@blp.route("/event-types", methods=["POST"])
@blp.auth("events:write")
@blp.arguments(EventTypeSchema)
@blp.response(201, EventTypeSchema)
@blp.doc(
    **links_to(
        "event_type",
        "GET /api/v1/event-types/{event_type}",
        "PATCH /api/v1/event-types/{event_type}",
        value="$response.body#/name",
    )
)
@blp.problem(409, "The event type already exists")
def create_event_type(data: dict[str, Any]) -> dict[str, Any]:
    """Register a custom event type (e.g. `order.paid`), optionally with a JSON Schema of its
    payload and examples, so this tenant can publish it."""
    tenant_id = current_tenant_id()
    if data["name"] in event_catalog(tenant_id):
        raise Problem(409, f"Event type {data['name']!r} already exists.")
    family = data["name"].split(".", 1)[0]
    reserved = {name.split(".", 1)[0] for name in BUILTIN_EVENT_TYPES} | set(
        get_registry().connectors()
    )
    if family in reserved:
        raise Problem(
            422,
            f"`{family}.*` event types belong to Switchboard or a connector; pick another prefix.",
            errors={"name": [f"the prefix {family!r} is reserved"]},
        )
    _check_payload_schema(data["schema"], data["examples"])
    with database.atomic():
        row = EventType.create(
            tenant_id=tenant_id,
            name=data["name"],
            description=data["description"],
            payload_schema=data["schema"],
            examples=data["examples"] or None,
        )
        record_audit("event_type.created", "event_type", data["name"], data)
    return custom_type_entry(row)


def _catalog_entry(event_type: str) -> dict[str, Any]:
    entry = event_catalog(current_tenant_id()).get(event_type)
    if entry is None:
        raise Problem(404, f"No event type {event_type!r}.")
    return entry


@blp.route("/event-types/<event_type>", methods=["GET"])
@blp.auth(None)
@blp.response(200, EventTypeSchema)
@blp.problem(404, "No such event type")
def get_event_type(event_type: str) -> dict[str, Any]:
    """Get one event type of the catalog, with its payload schema and examples."""
    return _catalog_entry(event_type)


@blp.route("/event-types/<event_type>", methods=["PATCH"])
@blp.auth("events:write")
@blp.arguments(EventTypeUpdateSchema)
@blp.response(200, EventTypeSchema)
@blp.problem(404, "No such event type")
@blp.problem(409, "A built-in or connector event type cannot be changed")
def update_event_type(data: dict[str, Any], event_type: str) -> dict[str, Any]:
    """Change a custom event type's description, payload schema (null removes it) or
    examples; the schema applies to events published from now on."""
    tenant_id = current_tenant_id()
    entry = _catalog_entry(event_type)
    if entry["source"] != "custom":
        raise Problem(409, f"{event_type!r} is a {entry['source']} event type: it cannot change.")
    with database.atomic():
        row = EventType.get_of(tenant_id, EventType.name == event_type)
        if row is None:
            raise Problem(404, f"No event type {event_type!r}.")
        schema = data.get("schema", row.payload_schema)
        examples = data.get("examples", row.examples or [])
        _check_payload_schema(schema, examples)
        row.description = data.get("description", row.description)
        row.payload_schema, row.examples = schema, examples or None
        row.save()
        record_audit("event_type.updated", "event_type", event_type, data)
    return custom_type_entry(row)


def _publishable(event_type: str, tenant_id: str) -> None:
    source = event_type_source(event_type, tenant_id)
    if source is None:
        raise Problem(
            422,
            f"Unknown event type {event_type!r}: register it with POST /api/v1/event-types.",
            errors={"type": ["unknown event type"]},
        )
    if source != "custom":
        raise Problem(
            422,
            f"{event_type!r} is emitted by Switchboard itself and cannot be published.",
            errors={"type": [f"reserved ({source}) event type"]},
        )


def _typed(tenant_id: str, event_type: str, data: dict[str, Any]) -> Routes:
    """The routes for publishing, once ``data`` is known to satisfy its type's schema (else a
    422 listing each failure by JSON pointer, before anything is counted or written)."""
    routes = current_routes()
    errors = routes.payload_errors(event_type, tenant_id, data)
    if errors:
        raise Problem(
            422,
            f"The event's data breaks the schema of {event_type!r} in {len(errors)} "
            "place(s); see `errors`.",
            errors=errors,
        )
    return routes


def _replay(tenant_id: str, idempotency_key: str) -> Event | None:
    return Event.get_of(
        tenant_id,
        Event.idempotency_key == idempotency_key,
        Event.created_at > utcnow() - IDEMPOTENCY_WINDOW,
    )


def _answer(event: Event, duplicate: bool) -> dict[str, Any]:
    count = event.delivery_count  # set by emit_event: no need to count again
    if count is None:
        count = Delivery.of(event.tenant_id).where(Delivery.event == event.id).count()
    return {"id": event.id, "deliveries": count, "duplicate": duplicate}


@blp.route("/events", methods=["POST"])
@blp.auth("events:write")
@blp.arguments(PublishSchema)
@blp.response(202, PublishedSchema)
@blp.doc(**links_to("event_id", "DELETE /api/v1/events/{event_id}", status="202"))
@blp.problem(413, "The event payload is over 256 KiB")
@blp.problem(
    422,
    "Invalid fields, an unknown or non-custom event type, or data that breaks the type's "
    "schema (`errors` maps each JSON pointer, such as `/data/amount`, to its failures)",
)
@blp.doc(
    parameters=[
        {
            "in": "header",
            "name": "Idempotency-Key",
            "schema": {"type": "string", "maxLength": 200},
            "description": "A repeat within 24 h returns the same event id, delivered once.",
        }
    ]
)
def publish_event(data: dict[str, Any]) -> dict[str, Any]:
    """Publish an event to every subscribed webhook and integration."""
    if len(json.dumps(data["data"], separators=(",", ":"))) > MAX_EVENT_BYTES:
        raise Problem(413, "Event data is larger than 256 KiB.")
    principal = current_principal()
    tenant_id = principal.tenant_id
    _publishable(data["type"], tenant_id)
    header = request.headers.get("Idempotency-Key", "").strip()
    if len(header) > 200:
        raise Problem(
            422,
            "Idempotency-Key is longer than 200 characters.",
            errors={"Idempotency-Key": ["longer than 200 characters"]},
        )
    key = f"{principal.key.id}:{header}" if header else None
    if key is not None and (existing := _replay(tenant_id, key)) is not None:
        return _answer(existing, duplicate=True)
    routes = _typed(tenant_id, data["type"], data["data"])
    count_event(principal.tenant)
    if key is None:
        event = emit_event_alone(data["type"], data["data"], tenant_id=tenant_id, routes=routes)
        return _answer(event, duplicate=False)
    try:
        with database.atomic():
            # An expired use of the same key frees it.
            Event.update_of(tenant_id, idempotency_key=None).where(
                (Event.idempotency_key == key) & (Event.created_at <= utcnow() - IDEMPOTENCY_WINDOW)
            ).execute()
            event = emit_event(
                data["type"], data["data"], tenant_id=tenant_id, idempotency_key=key, routes=routes
            )
            # Answered inside the transaction: once it commits, nothing can fail the request.
            answer = _answer(event, duplicate=False)
    except peewee.IntegrityError:
        existing = _replay(tenant_id, key)
        if existing is None:
            raise
        return _answer(existing, duplicate=True)
    return answer


@blp.route("/events", methods=["GET"])
@blp.auth("webhooks:read")
@blp.arguments(EventQueryArgsSchema, location="query")
@blp.response(200, EventPageSchema)
def list_events(args: dict[str, Any]) -> dict[str, Any]:
    """List published events (the outbox), newest first.

    As on the live stream, `integration.*` events need `integrations:read`, `alert.*` events
    `alerts:read`, and `api_key.*` events (every user's keys) an admin key; others are left out.
    """
    principal = current_principal()
    query = Event.of(principal.tenant_id)
    for family in hidden_event_families(principal.has):
        query = query.where(~Event.type.startswith(f"{family}."))
    if args.get("type"):
        query = query.where(Event.type == args["type"])
    if args.get("since"):
        query = query.where(Event.created_at >= args["since"])
    if args.get("until"):
        query = query.where(Event.created_at < args["until"])
    return paginate_keyset(query, args, [Event.created_at, Event.id], "events")


@blp.route("/events/<event_id>", methods=["DELETE"])
@blp.auth("webhooks:write")
@blp.response(200, EventSchema)
@blp.problem(404, "No such event")
def erase_event(event_id: str) -> Event:
    """Erase an event's payload (GDPR): its deliveries keep their ids, times and outcomes but
    lose stored answers, unsent ones are discarded; the erasure is audited."""
    tenant_id = current_tenant_id()
    with database.atomic():
        event = Event.get_of(tenant_id, Event.id == event_id)
        if event is None:
            raise Problem(404, f"No event {event_id!r}.")
        if erase_events(tenant_id, [event.id]):
            record_audit("event.erased", "event", event.id, {"type": event.type})
        event = Event.get_of(tenant_id, Event.id == event_id)
    return event


@blp.route("/erasure", methods=["POST"])
@blp.auth("webhooks:write")
@blp.arguments(EventErasureSchema)
@blp.response(202, EventErasureStartedSchema)
def start_event_erasure(data: dict[str, Any]) -> dict[str, Any]:
    """Erase every event of this tenant whose payload matches (e.g. a person's email), as a
    job: poll `GET /jobs/{job_id}`. Audited with the paths, never the values."""
    errors = match_problems(data["match"])
    if errors:
        where = next(iter(errors))
        raise Problem(422, f"Invalid `{where}`: {errors[where][0]}", errors=errors)
    since = data.get("since")
    with database.atomic():
        job_id = start_matching_erasure(current_tenant_id(), data["match"], since)
        when = since.isoformat() + "Z" if since is not None else None
        audit = {"paths": sorted(data["match"]), "since": when, "job_id": job_id}
        record_audit("events.erasure_requested", "event", None, audit)
    return {"job_id": job_id}
