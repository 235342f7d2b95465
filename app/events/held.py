"""Deliveries of a disabled webhook: held (never failed, never dropped), then sent or discarded.

Disabling a webhook, by hand or automatically, holds its pending deliveries and every new one;
enabling it sends them (or discards them, if asked) and re-queues the deliveries that failed
while it was failing, so one call brings an endpoint back whole. ``recover`` re-queues failed
deliveries created since a time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.events import fifo
from app.events.outbox import wake_dispatcher
from app.store.db import database
from app.store.models import Delivery, Webhook, utcnow


def hold_pending(tenant_id: str, webhook_id: str) -> int:
    """Hold the webhook's pending deliveries (a leased one is held when its attempt ends)."""
    return (
        Delivery.update_of(tenant_id, status="held", updated_at=utcnow())
        .where((Delivery.webhook == webhook_id) & (Delivery.status == "pending"))
        .execute()
    )


def requeue(tenant_id: str, webhook_id: str, which: Any, **changes: Any) -> int:
    """Make the webhook's deliveries that match ``which`` due now (with ``changes``): pending,
    or held while it is disabled; a fifo webhook's re-enter their queues (``queued``) and go
    in order. Wakes the dispatcher after commit; returns how many.

    Call inside a transaction: queues are promoted, and the dispatcher woken, once it commits.
    """
    webhook = Webhook.get_of(tenant_id, Webhook.id == webhook_id)
    status = "pending" if webhook is not None and webhook.status == "active" else "held"
    now = utcnow()
    mine = (Delivery.webhook == webhook_id) & which
    count = 0
    for in_queue, target in ((False, status), (True, "queued")):
        updated = (
            Delivery.update_of(
                tenant_id, status=target, next_attempt_at=now, updated_at=now, **changes
            )
            .where(mine & Delivery.ordering_key.is_null(not in_queue))
            .execute()
        )
        if updated and in_queue:
            fifo.promote_after_commit(tenant_id, webhook_id)
        count += updated
    if count and status == "pending":
        database.after_commit(wake_dispatcher)
    return int(count)


def _requeue(webhook: Webhook, status: str, *conditions: Any) -> int:
    """Make the webhook's deliveries in ``status`` due now, each with a fresh retry budget."""
    which = Delivery.status == status
    for condition in conditions:
        which &= condition
    fresh = Delivery.attempts + webhook.retry_count + 1
    return requeue(webhook.tenant_id, webhook.id, which, max_attempts=fresh)


def release_held(webhook: Webhook, held: str) -> dict[str, int]:
    """On enabling: send (``held="send"``) or discard the held deliveries (with a fifo
    webhook's queued ones: what waited behind them); say how many."""
    if held == "discard":
        discarded = (
            Delivery.update_of(webhook.tenant_id, status="discarded", updated_at=utcnow())
            .where((Delivery.webhook == webhook.id) & Delivery.status.in_(("held", "queued")))
            .execute()
        )
        return {"sent": 0, "discarded": discarded}
    return {"sent": _requeue(webhook, "held"), "discarded": 0}


def recover_failed(webhook: Webhook, since: datetime) -> int:
    """Re-queue every failed delivery created since ``since`` (held if the webhook is disabled)."""
    return _requeue(webhook, "failed", Delivery.created_at >= since)


def recover_outage(webhook: Webhook, failing_since: datetime) -> int:
    """Re-queue every delivery that failed for good at or after ``failing_since`` (when the
    endpoint's failure streak began), whenever it was created."""
    return _requeue(webhook, "failed", Delivery.updated_at >= failing_since)
