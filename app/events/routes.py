"""Event routes: what a publish needs to know, cached per process — which webhooks and
subscriptions an event type goes to (with their filters and ordering), and custom types'
payload schemas.

Every publish needs the targets its type matches. Reading every webhook and subscribed
integration on each publish cost two queries and their row building, so each process keeps
them, checked on every use against ``event_routes_version``: a single-row value that database
triggers change in the very transaction that creates, deletes or re-routes a webhook (its
patterns, status, filter or ordering), an integration's subscriptions, or a custom event
type's schema (migrations ``0008_event_routes_version``, ``0010`` and ``0011``). So a change
committed by any process is seen by the next publish anywhere — no time-based staleness — and
the check is one indexed single-row read, not the tables.

The version is read before the rows it guards: a change that commits between the two leaves
the cache newer than its version, and the next publish (which sees the new version) reloads.

Filters are compiled once per load, and each (tenant, event type) keeps its targets in a
:class:`~app.events.filters.FilteredTargets`, so a publish evaluates only the filters its
payload can pass; payload validators are compiled on first use.
"""

from __future__ import annotations

import hashlib
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import peewee
from flask import current_app
from jsonschema import Draft202012Validator

from app.connectors.payloads import payload_errors, payload_validator
from app.events.filters import (
    MISSING,
    Filter,
    FilteredTargets,
    Path,
    compile_filter,
    parse_path,
    resolve,
)
from app.store import jsoncodec
from app.store.db import database
from app.store.models import EventType, Integration, Webhook
from app.stream.kinds import pattern_matches

EXTENSION = "event_routes"
#: An ordering key longer than this is stored as its SHA-256.
MAX_ORDERING_KEY = 255


@dataclass(frozen=True)
class Target:
    """A delivery row template (webhook or integration + subscription index, status,
    max_attempts) and, for a fifo webhook, the path of its ordering key (``()``: one queue)."""

    row: dict[str, Any]
    ordering: Path | None = None


@dataclass
class Route:
    """A webhook's or subscription's patterns, filter and delivery row template."""

    patterns: list[str]
    filter: Filter | None
    target: Target


@dataclass
class Routes:
    """One version of the routing tables, by tenant, and the targets each (tenant, event
    type) matched so far. An event only ever matches its own tenant's targets."""

    version: int
    tenants: dict[str, list[Route]]
    schemas: dict[tuple[str, str], Any] = field(default_factory=dict)
    _matched: dict[tuple[str, str], FilteredTargets[Target]] = field(default_factory=dict)
    _validators: dict[tuple[str, str], Draft202012Validator] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def deliveries(self, event_type: str, tenant_id: str, data: Any) -> list[dict[str, Any]]:
        """Delivery row templates for an event of ``event_type`` with ``data``: one per target
        whose patterns match and whose filter passes; each with its ``ordering_key`` (the
        queue of a fifo webhook, else None)."""
        matched = self._matched.get((tenant_id, event_type))
        if matched is None:
            matched = FilteredTargets(
                (route.filter, route.target)
                for route in self.tenants.get(tenant_id, ())
                if any(pattern_matches(p, event_type) for p in route.patterns)
            )
            with self._lock:
                if len(self._matched) >= 10_000:  # a bound against arbitrary type names
                    self._matched.clear()
                self._matched[(tenant_id, event_type)] = matched
        body = {"type": event_type, "data": data}
        return [
            {**target.row, "ordering_key": _ordering_key(body, target.ordering)}
            for target in matched.select(body)
        ]

    def payload_errors(self, event_type: str, tenant_id: str, data: Any) -> dict[str, list[str]]:
        """Where ``data`` breaks the tenant's schema of ``event_type`` (JSON pointers)."""
        schema = self.schemas.get((tenant_id, event_type))
        if schema is None:
            return {}
        validator = self._validators.get((tenant_id, event_type))
        if validator is None:
            validator = self._validators[(tenant_id, event_type)] = payload_validator(schema)
        return payload_errors(validator, data)


def _ordering_key(body: dict[str, Any], path: Path | None) -> str | None:
    """The queue of a fifo webhook's delivery: the JSON of the value at ``path`` ("" when
    the event has none, or the webhook orders all its deliveries in one queue)."""
    if path is None:
        return None
    value = resolve(body, path) if path else MISSING
    if value is MISSING:
        return ""
    text = jsoncodec.dumps(value, sort_keys=True, separators=(",", ":"))
    if len(text) > MAX_ORDERING_KEY:
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return text


def current_version() -> int:
    """The routes version as of now (one single-row read)."""
    row = database.execute_sql("SELECT version FROM event_routes_version WHERE id = 1").fetchone()
    return int(row[0]) if row else 0


def load_routes(version: int) -> Routes:
    """Read every tenant's webhooks, active integrations' subscriptions and custom types'
    schemas (tagged with ``version``).

    Operator-wide on purpose: one read serves every tenant's publishes, and each tenant's
    rows are kept apart by ``tenant_id`` before anything matches them. Filters were checked
    when they were saved; one that no longer compiles (a bound lowered since) matches nothing.
    """
    tenants: dict[str, list[Route]] = defaultdict(list)
    fields = (
        Webhook.tenant_id,
        Webhook.id,
        Webhook.events,
        Webhook.retry_count,
        Webhook.status,
        Webhook.payload_filter,
        Webhook.ordering,
        Webhook.ordering_key,
    )
    for w in Webhook.select(*fields):
        # A disabled webhook's deliveries are held, not dropped: enabling sends them.
        row = {
            "webhook": w.id,
            "max_attempts": w.retry_count + 1,
            "status": "pending" if w.status == "active" else "held",
        }
        ordering = None
        if w.ordering == "fifo":
            ordering = parse_path(w.ordering_key) if w.ordering_key else ()
        route = Route(list(w.events or ()), _compiled(w.payload_filter), Target(row, ordering))
        tenants[w.tenant_id].append(route)
    subscription_attempts = current_app.config["SUBSCRIPTION_MAX_ATTEMPTS"]
    integrations = Integration.select(
        Integration.tenant_id, Integration.id, Integration.subscriptions
    ).where(
        Integration.subscriptions != peewee.Value("[]", converter=False),
        Integration.status != "inactive",
    )
    for integration in integrations:
        for index, subscription in enumerate(integration.subscriptions or ()):
            row = {
                "integration": integration.id,
                "subscription_index": index,
                "max_attempts": subscription_attempts,
            }
            route = Route(
                list(subscription.get("events", ())),
                _compiled(subscription.get("filter")),
                Target(row),
            )
            tenants[integration.tenant_id].append(route)
    typed = EventType.select(EventType.tenant_id, EventType.name, EventType.payload_schema).where(
        EventType.payload_schema.is_null(False)
    )
    schemas = {(t.tenant_id, t.name): t.payload_schema for t in typed}
    return Routes(version, dict(tenants), schemas)


def _compiled(spec: Any) -> Filter | None:
    try:
        return compile_filter(spec)
    except ValueError:
        return Filter(lambda body: False, None)


def current_routes() -> Routes:
    """The routes as the database has them now (reloaded when the version moved)."""
    version = current_version()
    routes: Routes | None = current_app.extensions.get(EXTENSION)
    if routes is None or routes.version != version:
        routes = current_app.extensions[EXTENSION] = load_routes(version)
    return routes
