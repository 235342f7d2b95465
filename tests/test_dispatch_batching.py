"""The dispatcher's batched statements record exactly what one statement per delivery did.

``claim_due`` leases a batch in one statement (``SKIP LOCKED`` on PostgreSQL);
``record_outcomes`` ends the failure streak of every all-successful webhook in one statement
and learns which deliveries still exist from its own ``UPDATE … RETURNING``. No HTTP here:
outcomes are given, so the rules are checked without a receiver.
"""

from __future__ import annotations

from typing import Any

from app.events.dispatch import claim_due, record_outcomes
from app.store.db import database
from app.store.models import Delivery, DeliveryAttempt, Webhook, utcnow
from app.webhooks.sender import SendResult

OK = SendResult(True, 200, 1.0)
FAIL = SendResult(False, 500, 1.0, "HTTP 500")


def _hooks(api: Any, integration: dict[str, Any], n: int) -> list[str]:
    api.post("/api/v1/event-types", json={"name": "order.paid", "description": "paid"})
    ids = []
    for _ in range(n):
        body = {
            "url": "http://127.0.0.1:9/h",
            "events": ["order.paid"],
            "integration_id": integration["id"],
        }
        res = api.post("/api/v1/webhooks", json=body)
        assert res.status_code == 201, res.json
        ids.append(res.json["id"])
    return ids


def _publish(api: Any, n: int) -> None:
    for i in range(n):
        res = api.post("/api/v1/events", json={"type": "order.paid", "data": {"i": i}})
        assert res.status_code == 202, res.json


def test_claims_never_overlap_and_lease_each_delivery_once(
    app: Any, api: Any, integration: dict[str, Any]
) -> None:
    _hooks(api, integration, 1)
    _publish(api, 10)
    with app.app_context(), database.connection_context():
        first, second = claim_due(4), claim_due(4)
        rest = claim_due(10)
        ids = [c.delivery.id for c in first + second + rest]
        assert (len(first), len(second), len(rest)) == (4, 4, 2)
        assert len(set(ids)) == 10
        tokens = {c.delivery.lease_token for c in first}
        assert len(tokens) == 1 and None not in tokens
        assert all(c.event is not None and c.webhook is not None for c in first)
        assert claim_due(10) == []  # all leased


def test_failure_streaks_follow_the_order_of_outcomes_in_one_batch(
    app: Any, api: Any, integration: dict[str, Any]
) -> None:
    recovered, relapsed, clean = _hooks(api, integration, 3)
    _publish(api, 2)
    with app.app_context(), database.connection_context():
        since = utcnow()
        Webhook.update(consecutive_failures=4, failing_since=since).where(
            Webhook.id.in_([recovered, clean])
        ).execute()
        batch = sorted(claim_due(10), key=lambda c: c.delivery.event_id)
        assert len(batch) == 6
        plan = {recovered: [FAIL, OK], relapsed: [OK, FAIL], clean: [OK, OK]}
        results = [plan[c.webhook.id].pop(0) for c in batch]  # type: ignore[union-attr]
        record_outcomes(batch, results)
        state = {w.id: (w.consecutive_failures, w.failing_since) for w in Webhook.select()}
        assert state[recovered] == (0, None)
        assert state[clean] == (0, None)
        assert state[relapsed][0] == 1 and state[relapsed][1] is not None
        assert DeliveryAttempt.select().count() == 6


def test_an_attempt_whose_lease_was_taken_over_is_still_recorded(
    app: Any, api: Any, integration: dict[str, Any]
) -> None:
    """Another worker took the lease (ours lapsed): its state is left alone, but the attempt we
    made is history and is kept."""
    _hooks(api, integration, 1)
    _publish(api, 2)
    with app.app_context(), database.connection_context():
        batch = claim_due(10)
        stolen = batch[0].delivery.id
        Delivery.update(lease_token="lease_other").where(Delivery.id == stolen).execute()
        record_outcomes(batch, [OK, OK])
        assert Delivery.get_by_id(stolen).status == "pending"
        assert Delivery.get_by_id(batch[1].delivery.id).status == "succeeded"
        assert DeliveryAttempt.select().where(DeliveryAttempt.delivery == stolen).count() == 1
