"""The alert evaluator: a periodic pass in the workers that fires, resolves and notifies.

Every worker runs the pass every ``SWITCHBOARD_ALERT_INTERVAL`` seconds, but a Redis lock held
for most of an interval lets one worker of many do it, and the database makes sure nothing
fires twice for one incident anyway: an open firing holds ``open_key = "<rule>|<subject>"``
under a unique index, so a second worker's insert fails and is skipped, and a notice is sent
only by the worker that leased it. After a firing resolves, the same rule and subject stay
quiet for the rule's ``cooldown_seconds``.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timedelta

import peewee
from flask import Flask

from app.alerts.conditions import CONDITIONS, Holding, with_defaults
from app.alerts.notify import alert_view, queue_notice, send_due
from app.metrics import instruments as metrics
from app.store.db import database
from app.store.models import AlertFiring, AlertRule, utcnow
from app.store.outage import WORKER_SURVIVES, describe
from app.store.redis import get_redis
from app.stream import kinds

log = logging.getLogger(__name__)

LOCK_KEY = "sb:alerts:lock"


def evaluate_alerts() -> None:
    """One pass: evaluate every enabled rule, then send the notices that are due.

    Operator-wide on purpose: one pass serves every tenant; each rule is evaluated on its own
    tenant's data only, and what it fires belongs to that tenant.
    """
    now = utcnow()
    for rule in AlertRule.select():
        if not rule.enabled:
            _resolve_all(rule, now)
            continue
        try:
            condition = with_defaults(rule.condition)
            holding = CONDITIONS[condition["type"]].evaluate(condition, now, rule.tenant_id)
        except (KeyError, ValueError, TypeError) as exc:  # a rule stored before a change
            log.warning("alert rule %s cannot be evaluated: %s", rule.id, exc)
            continue
        _apply(rule, holding, now)
    send_due()


def _open_firings(rule: AlertRule) -> dict[str, AlertFiring]:
    rows = AlertFiring.of(rule.tenant_id).where(
        (AlertFiring.rule == rule.id) & (AlertFiring.status == "firing")
    )
    return {row.subject: row for row in rows}


def _apply(rule: AlertRule, holding: dict[str, Holding], now: datetime) -> None:
    open_firings = _open_firings(rule)
    for subject, found in holding.items():
        if subject not in open_firings and not _cooling_down(rule, subject, now):
            _fire(rule, subject, found, now)
    for subject, firing in open_firings.items():
        if subject not in holding:
            _resolve(rule, firing, now, notify=rule.notify_resolved)


def _cooling_down(rule: AlertRule, subject: str, now: datetime) -> bool:
    cutoff = now - timedelta(seconds=rule.cooldown_seconds)
    return (
        AlertFiring.of(rule.tenant_id, AlertFiring.id)
        .where(
            (AlertFiring.rule == rule.id)
            & (AlertFiring.subject == subject)
            & (AlertFiring.resolved_at >= cutoff)
        )
        .exists()
    )


def _fire(rule: AlertRule, subject: str, found: Holding, now: datetime) -> None:
    with database.atomic():
        try:
            with database.atomic():  # a savepoint: PostgreSQL's transaction survives the conflict
                firing = AlertFiring.create(
                    tenant_id=rule.tenant_id,
                    rule=rule.id,
                    subject=subject,
                    open_key=f"{rule.id}|{subject}",
                    summary=found.summary,
                    details=found.details,
                    fired_at=now,
                )
        except peewee.IntegrityError:
            return  # another worker fired it a moment ago
        queue_notice(rule, firing, "fired")
        kinds.alert_changed(rule.tenant_id, "fired", alert_view(rule, firing))
    metrics.alert(rule.condition.get("type", "unknown"), "fired")
    log.warning("alert %s fired for %s: %s", rule.name, subject, found.summary)


def _resolve(rule: AlertRule, firing: AlertFiring, now: datetime, *, notify: bool) -> None:
    with database.atomic():
        changed = (
            AlertFiring.update_of(rule.tenant_id, status="resolved", resolved_at=now, open_key=None)
            .where((AlertFiring.id == firing.id) & (AlertFiring.status == "firing"))
            .execute()
        )
        if not changed:
            return
        firing.status, firing.resolved_at = "resolved", now
        if notify:
            queue_notice(rule, firing, "resolved")
        kinds.alert_changed(rule.tenant_id, "resolved", alert_view(rule, firing))
    metrics.alert(rule.condition.get("type", "unknown"), "resolved")
    log.info("alert %s resolved for %s", rule.name, firing.subject)


def _resolve_all(rule: AlertRule, now: datetime) -> None:
    """A disabled rule's open firings end quietly (no notice)."""
    for firing in _open_firings(rule).values():
        _resolve(rule, firing, now, notify=False)


def start_alert_evaluator(app: Flask) -> threading.Thread:
    """Run :func:`evaluate_alerts` every ``ALERT_INTERVAL`` seconds, one worker at a time."""
    interval = float(app.config["ALERT_INTERVAL"])
    owner = f"{os.getpid()}"

    def run_once() -> None:
        with app.app_context():
            try:
                if get_redis().set(LOCK_KEY, owner, nx=True, px=max(1, int(interval * 800))):
                    with database.connection_context():
                        evaluate_alerts()
            except WORKER_SURVIVES as exc:  # an outage is one line per pass, not a traceback
                log.warning("alert evaluation failed: %s; next in %g s", describe(exc), interval)
            except Exception:  # noqa: BLE001 - the thread must outlive any failure
                log.exception("alert evaluation failed; next pass in %g s", interval)

    def loop() -> None:
        stop = threading.Event()  # never set: the thread ends with the process
        while not stop.wait(interval):
            run_once()

    thread = threading.Thread(target=loop, name="alert-evaluator", daemon=True)
    thread.start()
    return thread
