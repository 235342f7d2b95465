"""What the outside world learns about each delivery attempt: metrics, the live stream, a log line.

The dispatcher calls :func:`attempt_recorded` once per recorded attempt, inside the
transaction that records it (the stream entries wait for its commit), and
:func:`webhook_disabled` when it disables a failing webhook. The log line carries the request
id of the API request that published the event, so one grep follows a request into workers.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from app.logs.structured import request_id_bound
from app.metrics import instruments as metrics
from app.store.models import Delivery, Event, Webhook
from app.stream import kinds
from app.webhooks.sender import SendResult

log = logging.getLogger("switchboard.deliveries")


def attempt_recorded(
    delivery: Delivery,
    event: Event,
    webhook: Webhook | None,
    result: SendResult,
    status: str,
    attempt: int,
    next_at: datetime | None,
) -> None:
    """Count, announce and log one recorded attempt."""
    target = "webhook" if webhook is not None else "subscription"
    outcome = "retrying" if status == "pending" else status
    metrics.delivery_attempted(
        target, outcome, result.response_time_ms, event.created_at if result.success else None
    )
    integration_id = webhook.integration_id if webhook is not None else delivery.integration_id
    kinds.delivery_attempted(
        tenant_id=delivery.tenant_id,
        delivery_id=delivery.id,
        event_id=event.id,
        event_type=event.type,
        webhook_id=webhook.id if webhook is not None else None,
        integration_id=integration_id,
        attempt=attempt,
        status=outcome,
        status_code=result.status_code,
        error=result.error,
        response_time_ms=result.response_time_ms,
        next_attempt_at=next_at,
    )
    with request_id_bound(event.request_id):
        log.info(
            "delivery %s of %s (%s) attempt %d: %s",
            delivery.id,
            event.id,
            event.type,
            attempt,
            outcome,
            extra={
                "fields": {
                    "delivery_id": delivery.id,
                    "event_id": event.id,
                    "event_type": event.type,
                    "target": target,
                    "webhook_id": webhook.id if webhook is not None else None,
                    "integration_id": integration_id,
                    "attempt": attempt,
                    "outcome": outcome,
                    "status_code": result.status_code,
                    "duration_ms": round(result.response_time_ms, 2),
                }
            },
        )


def logs_written(rows: list[dict[str, Any]]) -> None:
    """Announce integration log rows the dispatcher inserted in bulk."""
    for row in rows:
        kinds.log_created(row)


def webhook_disabled(gone: bool) -> None:
    """A failing webhook was disabled automatically (its event says the rest)."""
    metrics.webhook_auto_disabled(gone)
