"""Security hardening (issue 10): what members can read, what is checked on save, what is logged."""

from __future__ import annotations

import json
import time

from tests.conftest import ApiClient, make_key, make_user
from tests.peers import WorkerProcess


def _wait(predicate, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_guard_refusal_does_not_reveal_name_resolution(app, api, client, integration):
    """Delivery history and logs say the guard refused, not what `localhost` resolved to."""
    api.post("/api/v1/event-types", json={"name": "order.paid", "description": "paid"})
    body = {"url": "http://localhost:9/x", "events": ["order.paid"]}
    hook = api.post("/api/v1/webhooks", json={**body, "integration_id": integration["id"]}).json
    member = ApiClient(
        client, make_key(app, make_user(app, "m@example.com"), ["webhooks:read", "logs:read"])
    )
    strict = WorkerProcess(app, SWITCHBOARD_ALLOWED_NETWORKS="")
    try:
        assert api.post("/api/v1/events", json={"type": "order.paid", "data": {}}).status_code == 202
        deliveries = _wait(
            lambda: [
                d
                for d in member.get(f"/api/v1/webhooks/{hook['id']}/deliveries").json["items"]
                if d["attempts"] >= 1
            ]
        )
        logs = _wait(lambda: member.get("/api/v1/logs").json["items"])
    finally:
        strict.stop()
    seen = json.dumps(deliveries) + json.dumps(logs)
    assert "destination refused by the outbound guard" in seen
    assert "127.0.0.1" not in seen and "resolved from" not in seen
