"""Retention: prune old events, deliveries (with their attempts), integration logs and audit.

Each kind keeps ``SWITCHBOARD_RETENTION_DAYS_<KIND>`` days (0 keeps it forever), unless a
tenant set its own period (``tenants.retention``, ``PATCH /retention``), which counts within
the operator's ``SWITCHBOARD_RETENTION_TENANT_RANGE_<KIND>`` (a value outside it is taken as
the nearest bound). Rows are deleted
in batches of ``SWITCHBOARD_RETENTION_BATCH_SIZE`` rows, one short transaction per batch, so
pruning a large backlog never holds long locks or builds one huge transaction. A delivery that
is still pending or held (for a disabled webhook), or leased by a worker, is never deleted; its
attempts go with it (the foreign key cascades); an event goes only once none of its deliveries
is left. Workers run a
pass every ``SWITCHBOARD_RETENTION_INTERVAL`` seconds (a Redis lock lets one of many do it);
``flask --app app retention run`` runs one by hand. Portal and console sessions that ended
more than a day ago are deleted in the same pass.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import peewee
from flask import Flask

from app.store.db import database
from app.store.models import (
    AuditLog,
    ConsoleSession,
    Delivery,
    Event,
    IntegrationLog,
    Tenant,
    utcnow,
)
from app.store.redis import get_redis

log = logging.getLogger(__name__)

LOCK_KEY = "sb:retention:lock"


def _deliveries(cutoff: datetime, now: datetime) -> Any:
    return (
        (Delivery.created_at < cutoff)
        & Delivery.status.not_in(("pending", "held", "queued"))
        & (Delivery.lease_until.is_null() | (Delivery.lease_until < now))
    )


def _events(cutoff: datetime, now: datetime) -> Any:
    undelivered = Delivery.select(Delivery.id).where(Delivery.event == Event.id)
    return (Event.created_at < cutoff) & ~peewee.fn.EXISTS(undelivered)


def _logs(cutoff: datetime, now: datetime) -> Any:
    return IntegrationLog.created_at < cutoff


def _audit(cutoff: datetime, now: datetime) -> Any:
    return AuditLog.created_at < cutoff


# kind → (its days setting, its id column, what makes a row prunable); deliveries before events.
KINDS: dict[str, tuple[str, peewee.Field, Callable[[datetime, datetime], Any]]] = {
    "deliveries": ("RETENTION_DAYS_DELIVERIES", Delivery.id, _deliveries),
    "events": ("RETENTION_DAYS_EVENTS", Event.id, _events),
    "logs": ("RETENTION_DAYS_LOGS", IntegrationLog.id, _logs),
    "audit": ("RETENTION_DAYS_AUDIT", AuditLog.id, _audit),
}


def tenant_days(config: Mapping[str, Any], kind: str, chosen: Any) -> int:
    """The days a tenant keeps ``kind``: its own choice within the operator's range, or the
    global period when it chose none (None)."""
    if chosen is None:
        return int(config[KINDS[kind][0]])
    low, high = config[f"RETENTION_TENANT_RANGE_{kind.upper()}"]
    return min(max(int(chosen), low), high)


def prune_batch(kind: str, cutoff: datetime, batch_size: int, scope: Any = None) -> int:
    """Delete up to ``batch_size`` prunable rows of ``kind`` (within ``scope``, a condition on
    its tenant, if given) in one transaction; return how many."""
    _, key, prunable = KINDS[kind]
    condition = prunable(cutoff, utcnow())
    if scope is not None:
        condition &= scope
    batch = key.model.select(key).where(condition).limit(batch_size)
    with database.atomic():
        # The condition is checked again on each row deleted: one retried meanwhile stays.
        return int(key.model.delete().where(key.in_(batch) & condition).execute())


def run_retention(config: Mapping[str, Any], now: datetime | None = None) -> dict[str, int]:
    """Prune every kind for every tenant with a retention period (its own, or the global
    one); return the rows deleted per kind."""
    now = now or utcnow()
    batch_size = int(config["RETENTION_BATCH_SIZE"])
    deleted: dict[str, int] = {}
    with database.connection_context():
        chosen = {
            t.id: t.retention
            for t in Tenant.select(Tenant.id, Tenant.retention).where(
                Tenant.retention.is_null(False)
            )
        }
        for kind, (setting, key, _) in KINDS.items():
            own = {t: r[kind] for t, r in chosen.items() if r.get(kind) is not None}
            tenant_of = key.model.tenant_id
            passes = [(int(config[setting]), tenant_of.not_in(list(own)) if own else None)]
            passes += [(tenant_days(config, kind, days), tenant_of == t) for t, days in own.items()]
            for days, scope in passes:
                if not days:
                    continue
                cutoff = now - timedelta(days=days)
                deleted.setdefault(kind, 0)
                while True:
                    count = prune_batch(kind, cutoff, batch_size, scope)
                    deleted[kind] += count
                    if count < batch_size:
                        break
        deleted["console_sessions"] = _prune_ended_sessions(now, batch_size)
    return deleted


#: Portal and console sessions are kept this long after they ended (expired or revoked).
ENDED_SESSIONS_KEPT = timedelta(days=1)


def _prune_ended_sessions(now: datetime, batch_size: int) -> int:
    """Delete sessions that ended more than ``ENDED_SESSIONS_KEPT`` ago, in batches."""
    cutoff = now - ENDED_SESSIONS_KEPT
    ended = (ConsoleSession.expires_at < cutoff) | (ConsoleSession.revoked_at < cutoff)
    deleted = 0
    while True:
        batch = ConsoleSession.select(ConsoleSession.id).where(ended).limit(batch_size)
        with database.atomic():
            count = int(ConsoleSession.delete().where(ConsoleSession.id.in_(batch)).execute())
        deleted += count
        if count < batch_size:
            return deleted


def start_retention(app: Flask) -> threading.Thread:
    """Run ``run_retention`` every ``RETENTION_INTERVAL`` seconds in a daemon thread."""
    interval = float(app.config["RETENTION_INTERVAL"])

    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(interval):
            with app.app_context():
                try:
                    if get_redis().set(LOCK_KEY, "1", nx=True, px=int(interval * 800)):
                        deleted = run_retention(app.config)
                        if any(deleted.values()):
                            log.info("retention: deleted %s", deleted)
                except Exception as exc:  # noqa: BLE001 - keep looping
                    log.warning("retention pass failed: %s", exc)

    thread = threading.Thread(target=loop, name="retention", daemon=True)
    thread.start()
    return thread
