"""Event routes: which webhooks and subscriptions an event type goes to, cached per process.

Every publish needs the targets its type matches. Reading every webhook and subscribed
integration on each publish cost two queries and their row building, so each process keeps
them, checked on every use against ``event_routes_version``: a single-row value that database
triggers change in the very transaction that creates, deletes or re-routes a webhook or an
integration's subscriptions (see migration ``0008_event_routes_version``). So a change
committed by any process is seen by the next publish anywhere — no time-based staleness — and
the check is one indexed single-row read, not the tables.

The version is read before the rows it guards: a change that commits between the two leaves
the cache newer than its version, and the next publish (which sees the new version) reloads.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import peewee
from flask import current_app

from app.store.db import database
from app.store.models import Integration, Webhook
from app.stream.kinds import pattern_matches

EXTENSION = "event_routes"


@dataclass
class TenantRoutes:
    """One tenant's webhooks and subscriptions."""

    # (webhook id, patterns, max attempts, active)
    webhooks: list[tuple[str, list[str], int, bool]] = field(default_factory=list)
    # (integration id, subscription index, patterns)
    subscriptions: list[tuple[str, int, list[str]]] = field(default_factory=list)


@dataclass
class Routes:
    """One version of the routing tables, by tenant, and the targets each (tenant, event
    type) matched so far. An event only ever matches its own tenant's targets."""

    version: int
    tenants: dict[str, TenantRoutes]
    _matched: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def targets(self, event_type: str, tenant_id: str) -> list[dict[str, Any]]:
        """Delivery row templates (target, status, max_attempts) for ``event_type``."""
        matched = self._matched.get((tenant_id, event_type))
        if matched is None:
            matched = self._match(event_type, self.tenants.get(tenant_id, TenantRoutes()))
            with self._lock:
                if len(self._matched) >= 10_000:  # a bound against arbitrary type names
                    self._matched.clear()
                self._matched[(tenant_id, event_type)] = matched
        return matched

    def _match(self, event_type: str, routes: TenantRoutes) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for webhook_id, patterns, max_attempts, active in routes.webhooks:
            if any(pattern_matches(p, event_type) for p in patterns):
                # A disabled webhook's deliveries are held, not dropped: enabling sends them.
                status = "pending" if active else "held"
                rows.append({"webhook": webhook_id, "max_attempts": max_attempts, "status": status})
        subscription_attempts = current_app.config["SUBSCRIPTION_MAX_ATTEMPTS"]
        for integration_id, index, patterns in routes.subscriptions:
            if any(pattern_matches(p, event_type) for p in patterns):
                rows.append(
                    {
                        "integration": integration_id,
                        "subscription_index": index,
                        "max_attempts": subscription_attempts,
                    }
                )
        return rows


def current_version() -> int:
    """The routes version as of now (one single-row read)."""
    row = database.execute_sql("SELECT version FROM event_routes_version WHERE id = 1").fetchone()
    return int(row[0]) if row else 0


def load_routes(version: int) -> Routes:
    """Read every tenant's webhooks and active integrations' subscriptions (tagged with
    ``version``).

    Operator-wide on purpose: one read serves every tenant's publishes, and each tenant's
    rows are kept apart by ``tenant_id`` before anything matches them.
    """
    tenants: dict[str, TenantRoutes] = defaultdict(TenantRoutes)
    fields = (Webhook.tenant_id, Webhook.id, Webhook.events, Webhook.retry_count, Webhook.status)
    for w in Webhook.select(*fields):
        tenants[w.tenant_id].webhooks.append(
            (w.id, list(w.events or ()), w.retry_count + 1, w.status == "active")
        )
    integrations = Integration.select(
        Integration.tenant_id, Integration.id, Integration.subscriptions
    ).where(
        Integration.subscriptions != peewee.Value("[]", converter=False),
        Integration.status != "inactive",
    )
    for integration in integrations:
        for index, subscription in enumerate(integration.subscriptions or ()):
            tenants[integration.tenant_id].subscriptions.append(
                (integration.id, index, list(subscription.get("events", ())))
            )
    return Routes(version, dict(tenants))


def event_targets(event_type: str, tenant_id: str) -> list[dict[str, Any]]:
    """The delivery row templates of ``tenant_id``'s ``event_type`` as the database has them."""
    version = current_version()
    routes: Routes | None = current_app.extensions.get(EXTENSION)
    if routes is None or routes.version != version:
        routes = current_app.extensions[EXTENSION] = load_routes(version)
    return routes.targets(event_type, tenant_id)
