"""Notifying a rule's target of a firing or its resolution.

- ``{"type": "webhook"}``: an ``alert.fired`` / ``alert.resolved`` event is emitted in the
  firing's own transaction, so every webhook subscribed to it gets a signed delivery through
  the outbox (retries, at-least-once) like any other event.
- ``{"type": "action", "integration_id", "action", "input"}``: the connector action runs (e.g.
  Slack ``send_message``) with ``input`` rendered from the alert (``{{alert.text}}``…; default
  ``{"text": "{{alert.text}}"}``). The notification row is claimed with a lease before the
  call, so two workers never send the same notice; a retryable failure is tried again on the
  webhook retry schedule, up to ``SWITCHBOARD_SUBSCRIPTION_MAX_ATTEMPTS`` attempts.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import current_app

from app.connectors.runtime import execute_action, render_template
from app.events.catalog import emit_event
from app.metrics import instruments as metrics
from app.store.db import database
from app.store.models import AlertFiring, AlertNotification, AlertRule, Integration, utcnow
from app.webhooks.backoff import retry_delay

log = logging.getLogger(__name__)

DEFAULT_INPUT = {"text": "{{alert.text}}"}
BATCH = 50


def alert_view(rule: AlertRule, firing: AlertFiring) -> dict[str, Any]:
    """What notices, events and templates say about a firing."""
    resolved = firing.status == "resolved"
    verb = "RESOLVED" if resolved else "ALERT"
    return {
        "id": firing.id,
        "rule_id": rule.id,
        "rule": rule.name,
        "condition": rule.condition.get("type"),
        "subject": firing.subject,
        "status": firing.status,
        "summary": firing.summary,
        "details": firing.details,
        "fired_at": firing.fired_at.isoformat() + "Z",
        "resolved_at": firing.resolved_at.isoformat() + "Z" if firing.resolved_at else None,
        "text": f"[Switchboard] {verb} {rule.name}: {firing.summary}",
    }


def queue_notice(rule: AlertRule, firing: AlertFiring, phase: str) -> None:
    """Record (and for webhook targets, emit) the notice; call inside the firing's transaction."""
    target_type = rule.target.get("type", "webhook")
    if target_type == "webhook":
        event = emit_event(f"alert.{phase}", alert_view(rule, firing), tenant_id=rule.tenant_id)
        AlertNotification.create(
            tenant_id=rule.tenant_id,
            firing=firing.id,
            phase=phase,
            target_type=target_type,
            status="sent",
            attempts=1,
            event_id=event.id,
            sent_at=utcnow(),
        )
        metrics.alert_notification(target_type, "sent")
        return
    AlertNotification.create(
        tenant_id=rule.tenant_id, firing=firing.id, phase=phase, target_type=target_type
    )


def send_due() -> int:
    """Send every action notice that is due and not leased elsewhere; return how many ran.

    Operator-wide on purpose (every tenant's notices, one pass); each is sent through its
    own tenant's integration.
    """
    now = utcnow()
    free = AlertNotification.lease_until.is_null() | (AlertNotification.lease_until < now)
    due = (
        AlertNotification.select(AlertNotification.id)
        .where(
            (AlertNotification.status == "pending")
            & (AlertNotification.next_attempt_at <= now)
            & free
        )
        .order_by(AlertNotification.next_attempt_at)
        .limit(BATCH)
    )
    lease = timedelta(seconds=float(current_app.config["CONNECTOR_TIMEOUT"]) + 30)
    sent = 0
    ids: list[str] = [row.id for row in due]
    for notification_id in ids:
        claimed = (
            AlertNotification.update(lease_until=now + lease)
            .where(
                (AlertNotification.id == notification_id)
                & (AlertNotification.status == "pending")
                & free
            )
            .execute()
        )
        if claimed:
            _send(AlertNotification.get_by_id(notification_id))
            sent += 1
    return sent


def _send(notice: AlertNotification) -> None:
    firing: AlertFiring = notice.firing
    rule: AlertRule = firing.rule
    target = rule.target
    max_attempts = int(current_app.config["SUBSCRIPTION_MAX_ATTEMPTS"])
    attempt = notice.attempts + 1
    integration = Integration.get_of(rule.tenant_id, Integration.id == target.get("integration_id"))
    if integration is None or integration.status == "inactive":
        _finish(notice, attempt, "failed", "the target integration is missing or inactive")
        return
    view = alert_view(rule, firing)
    if notice.phase == "fired":  # the firing may have resolved since; the notice says "fired"
        view.update(
            status="firing", resolved_at=None, text=view["text"].replace("RESOLVED", "ALERT", 1)
        )
    action_input = render_template(target.get("input") or DEFAULT_INPUT, {"alert": view})
    outcome = execute_action(
        integration,
        target["action"],
        action_input,
        log_data={"alert_firing_id": firing.id, "phase": notice.phase},
        will_retry=attempt < max_attempts,
    )
    if outcome.success:
        _finish(notice, attempt, "sent", None)
    elif outcome.retryable and attempt < max_attempts:
        delay = outcome.retry_after or retry_delay(
            current_app.config["WEBHOOK_RETRY_SCHEDULE"], attempt
        )
        _finish(notice, attempt, "pending", outcome.error, utcnow() + timedelta(seconds=delay))
    else:
        _finish(notice, attempt, "failed", outcome.error)


def _finish(
    notice: AlertNotification, attempt: int, status: str, error: str | None, next_at: Any = None
) -> None:
    changes: dict[Any, Any] = {
        AlertNotification.status: status,
        AlertNotification.attempts: attempt,
        AlertNotification.last_error: error,
        AlertNotification.lease_until: None,
    }
    if status == "sent":
        changes[AlertNotification.sent_at] = utcnow()
    if next_at is not None:
        changes[AlertNotification.next_attempt_at] = next_at
    with database.atomic():
        AlertNotification.update_of(notice.tenant_id, changes).where(
            AlertNotification.id == notice.id
        ).execute()
    metrics.alert_notification("action", "retrying" if status == "pending" else status)
    if status == "failed":
        log.warning("alert notice %s failed for good: %s", notice.id, error)
