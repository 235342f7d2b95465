"""Event subscriptions of integrations: a delivery that runs a connector action.

They ride the same outbox as webhooks, so a subscribed action is attempted at least once even
when workers die or Redis is flushed; retries follow the webhook retry schedule.
"""

from __future__ import annotations

from app.connectors.runtime import execute_action, render_template
from app.store.models import Delivery, Event, Integration
from app.webhooks.sender import SendResult


def run_subscription(delivery: Delivery, event: Event) -> SendResult:
    """Run the subscribed action for ``event``; the result is recorded like a webhook attempt."""
    integration = Integration.get_of(delivery.tenant_id, Integration.id == delivery.integration_id)
    subs = integration.subscriptions if integration else []
    index = delivery.subscription_index
    if integration is None or index is None or index >= len(subs):
        return SendResult(False, None, 0.0, "subscription no longer exists", final=True)
    if integration.status == "inactive":  # switched off after the event arrived
        return SendResult(False, None, 0.0, "integration is inactive", final=True)
    subscription = subs[index]
    context = {
        "event": {
            "id": event.id,
            "type": event.type,
            "timestamp": event.created_at.isoformat() + "Z",
            "data": event.payload,
        }
    }
    action_input = render_template(subscription.get("input") or {}, context)
    outcome = execute_action(
        integration,
        subscription["action"],
        action_input,
        log_data={"delivery_id": delivery.id, "event_id": event.id, "event_type": event.type},
        will_retry=delivery.attempts + 1 < delivery.max_attempts,
    )
    return SendResult(
        outcome.success,
        None,
        outcome.response_time_ms,
        outcome.error,
        retry_after=outcome.retry_after,
        final=not outcome.success and not outcome.retryable,
    )
