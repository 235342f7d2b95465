"""Event routes: which webhooks and subscriptions an event type goes to, cached per process.

Every publish needs the targets its type matches. Reading every webhook and subscribed
integration on each publish cost two queries and their row building, so each process keeps
them, checked on every use against ``event_routes_version``: a single-row value that database
triggers change in the very transaction that creates, deletes or re-routes a webhook or an
integration's subscriptions (see migration ``0008_i14_event_routes_version``). So a change
committed by any process is seen by the next publish anywhere — no time-based staleness — and
the check is one indexed single-row read, not the tables.

The version is read before the rows it guards: a change that commits between the two leaves
the cache newer than its version, and the next publish (which sees the new version) reloads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import peewee
from flask import current_app

from app.store.db import database
from app.store.models import Integration, Webhook
from app.stream.kinds import pattern_matches

EXTENSION = "event_routes"


@dataclass
class Routes:
    """One version of the routing tables and the targets each event type matched so far."""

    version: int
    # (webhook id, patterns, max attempts, active)
    webhooks: list[tuple[str, list[str], int, bool]]
    # (integration id, subscription index, patterns)
    subscriptions: list[tuple[str, int, list[str]]]
    _matched: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def targets(self, event_type: str) -> list[dict[str, Any]]:
        """Delivery row templates (target, status, max_attempts) for ``event_type``."""
        matched = self._matched.get(event_type)
        if matched is None:
            matched = self._match(event_type)
            with self._lock:
                if len(self._matched) >= 10_000:  # a bound against arbitrary type names
                    self._matched.clear()
                self._matched[event_type] = matched
        return matched

    def _match(self, event_type: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for webhook_id, patterns, max_attempts, active in self.webhooks:
            if any(pattern_matches(p, event_type) for p in patterns):
                # A disabled webhook's deliveries are held, not dropped: enabling sends them.
                status = "pending" if active else "held"
                rows.append({"webhook": webhook_id, "max_attempts": max_attempts, "status": status})
        subscription_attempts = current_app.config["SUBSCRIPTION_MAX_ATTEMPTS"]
        for integration_id, index, patterns in self.subscriptions:
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
    """Read every webhook and active integration's subscriptions (tagged with ``version``)."""
    webhooks = [
        (w.id, list(w.events or ()), w.retry_count + 1, w.status == "active")
        for w in Webhook.select(Webhook.id, Webhook.events, Webhook.retry_count, Webhook.status)
    ]
    integrations = Integration.select(Integration.id, Integration.subscriptions).where(
        Integration.subscriptions != peewee.Value("[]", converter=False),
        Integration.status != "inactive",
    )
    subscriptions = [
        (integration.id, index, list(subscription.get("events", ())))
        for integration in integrations
        for index, subscription in enumerate(integration.subscriptions or ())
    ]
    return Routes(version, webhooks, subscriptions)


def event_targets(event_type: str) -> list[dict[str, Any]]:
    """The delivery row templates of ``event_type`` as the database has them now."""
    version = current_version()
    routes: Routes | None = current_app.extensions.get(EXTENSION)
    if routes is None or routes.version != version:
        routes = current_app.extensions[EXTENSION] = load_routes(version)
    return routes.targets(event_type)
