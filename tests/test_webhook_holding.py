"""Nothing is dropped by disabling a webhook: held deliveries, re-enabling, recover, auto-disable.

Real worker processes, a real local receiver, the HTTP API; the test config retries after
0.2, 0.4 and 0.8 s, so a delivery's retry budget is spent in under two seconds.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import standardwebhooks

from tests.peers import Receiver, WorkerProcess


def _publish(api, n, **data):
    ids = []
    for i in range(n):
        res = api.post("/api/v1/events", json={"type": "order.paid", "data": {"i": i, **data}})
        assert res.status_code == 202, res.json
        ids.append(res.json["id"])
    return ids


def _hook(api, integration, url, **kw):
    api.post("/api/v1/event-types", json={"name": "order.paid", "description": "paid"})
    body = {"url": url, "events": ["order.paid"], "integration_id": integration["id"], **kw}
    res = api.post("/api/v1/webhooks", json=body)
    assert res.status_code == 201, res.json
    return res.json


def _counts(api, hook_id):
    counts = {}
    for status in ("pending", "held", "succeeded", "failed", "discarded"):
        url = f"/api/v1/webhooks/{hook_id}/deliveries?status={status}&limit=1&count=true"
        page = api.get(url).json
        counts[status] = page["total"]
    return counts


def _until(check, timeout=30, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout}s")


class Outage:
    """A receiver answering 503 while ``down`` is set; the ids it accepted with 200."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.down.set()
        self.accepted: set[str] = set()
        self.peer = Receiver(self._respond)

    def _respond(self, req, n):
        if self.down.is_set():
            return 503, {}, b"down"
        self.accepted.add(req.headers["webhook-id"])
        return 200, {}, b"ok"


def test_outage_longer_than_retry_budget_loses_nothing(app, api, integration):
    """One `enable` brings the endpoint back whole: the deliveries held while it was disabled
    and those whose retries ran out while it was failing."""
    outage = Outage()
    worker = WorkerProcess(app)
    try:
        hook = _hook(api, integration, outage.peer.url, retry_count=1)
        published = _publish(api, 20)
        _until(lambda: _counts(api, hook["id"])["failed"] == 20, what="retries spent")
        res = api.patch(f"/api/v1/webhooks/{hook['id']}", json={"status": "disabled"})
        assert res.status_code == 200 and res.json["failing_since"] is not None
        published += _publish(api, 20, phase="while disabled")
        counts = _until(lambda: (c := _counts(api, hook["id"]))["held"] == 20 and c)
        assert counts == {"pending": 0, "held": 20, "succeeded": 0, "failed": 20, "discarded": 0}

        outage.down.clear()
        enabled = api.post(f"/api/v1/webhooks/{hook['id']}/enable", json={})
        assert enabled.status_code == 200, enabled.json
        assert enabled.json["sent"] == 20 and enabled.json["discarded"] == 0
        assert enabled.json["recovered"] == 20
        assert enabled.json["webhook"]["status"] == "active"

        _until(lambda: outage.accepted >= set(published), what="every event delivered")
        assert outage.accepted == set(published)
        _until(lambda: _counts(api, hook["id"])["succeeded"] == 40, what="all succeeded")
        state = api.get(f"/api/v1/webhooks/{hook['id']}").json
        assert state["failing_since"] is None and state["consecutive_failures"] == 0
    finally:
        worker.stop()
        outage.peer.close()


def test_disabling_holds_and_enabling_sends_or_discards(app, api, integration, worker):
    outage = Outage()
    outage.down.clear()
    try:
        keep = _hook(api, integration, outage.peer.url)
        drop = _hook(api, integration, outage.peer.url)
        for hook in (keep, drop):
            res = api.patch(f"/api/v1/webhooks/{hook['id']}", json={"status": "disabled"})
            assert res.status_code == 200 and res.json["status"] == "disabled"
        held = set(_publish(api, 5))
        time.sleep(1)  # a worker is running: a held delivery must still not be sent
        assert outage.peer.requests == []
        assert _counts(api, keep["id"])["held"] == 5 and _counts(api, drop["id"])["held"] == 5

        bad = api.patch(f"/api/v1/webhooks/{drop['id']}", json={"held": "discard"})
        assert bad.status_code == 422 and bad.content_type == "application/problem+json"
        bad = api.post(f"/api/v1/webhooks/{drop['id']}/enable", json={"held": "later"})
        assert bad.status_code == 422 and bad.content_type == "application/problem+json"

        res = api.post(f"/api/v1/webhooks/{drop['id']}/enable", json={"held": "discard"})
        assert res.status_code == 200 and res.json["discarded"] == 5 and res.json["sent"] == 0
        res = api.patch(f"/api/v1/webhooks/{keep['id']}", json={"status": "active"})
        assert res.status_code == 200 and res.json["status"] == "active"

        got = outage.peer.wait_for(lambda r: len(r) >= 5)
        assert {r.headers["webhook-id"] for r in got} == held
        for req in got:
            standardwebhooks.Webhook(keep["secret"]).verify(req.body, req.headers)
        assert _counts(api, drop["id"])["discarded"] == 5
        _until(lambda: _counts(api, keep["id"])["succeeded"] == 5, what="held ones sent")
        assert len(outage.peer.requests) == 5  # the discarded ones never went out
    finally:
        outage.peer.close()


def test_enable_recovers_failures_since_a_given_time_or_none_when_discarding(app, api, integration):
    outage = Outage()
    worker = WorkerProcess(app, SWITCHBOARD_WEBHOOK_DISABLE_AFTER="600s")
    try:
        hooks = [_hook(api, integration, outage.peer.url, retry_count=0) for _ in range(3)]
        started = datetime.now(UTC) - timedelta(seconds=1)
        _publish(api, 4)
        for hook in hooks:
            _until(lambda h=hook: _counts(api, h["id"])["failed"] == 4, what="all failed")
            res = api.patch(f"/api/v1/webhooks/{hook['id']}", json={"status": "disabled"})
            assert res.status_code == 200
        outage.down.clear()
        base = "/api/v1/webhooks/{}/enable"
        future = {"since": "2999-01-01T00:00:00Z"}
        assert api.post(base.format(hooks[0]["id"]), json=future).status_code == 422
        # Discarding the backlog recovers nothing unless asked with `since`.
        res = api.post(base.format(hooks[0]["id"]), json={"held": "discard"})
        assert (res.json["discarded"], res.json["recovered"]) == (0, 0)
        since = started.isoformat().replace("+00:00", "Z")
        res = api.post(base.format(hooks[1]["id"]), json={"held": "discard", "since": since})
        assert res.json["recovered"] == 4
        # `since` later than every delivery's creation: nothing to recover.
        later = (datetime.now(UTC) + timedelta(seconds=-0.001)).isoformat()
        res = api.post(base.format(hooks[2]["id"]), json={"since": later.replace("+00:00", "Z")})
        assert res.status_code == 200 and res.json["recovered"] == 0
        _until(lambda: _counts(api, hooks[1]["id"])["succeeded"] == 4, what="recovered sent")
        assert _counts(api, hooks[0]["id"])["failed"] == 4
    finally:
        worker.stop()
        outage.peer.close()


def test_auto_disable_after_failing_for_the_configured_time(app, api, integration, receiver):
    """Failing for SWITCHBOARD_WEBHOOK_DISABLE_AFTER (not a count) disables, with an event."""
    watcher = _hook(api, integration, receiver.url, events=["webhook.disabled"])
    failing = Receiver(lambda req, n: (500, {}, b"down"))
    worker = WorkerProcess(app, SWITCHBOARD_WEBHOOK_DISABLE_AFTER="0.5s")
    try:
        hook = _hook(api, integration, failing.url, retry_count=10)
        _publish(api, 1)
        state = _until(
            lambda: (
                (s := api.get(f"/api/v1/webhooks/{hook['id']}").json)["status"] == "disabled" and s
            ),
            what="auto-disable",
        )
        assert state["disabled_reason"].startswith("failing with no success since")
        assert state["failing_since"] is not None
        got = receiver.wait_for(lambda r: len(r) >= 1)
        payload = standardwebhooks.Webhook(watcher["secret"]).verify(got[0].body, got[0].headers)
        assert payload["type"] == "webhook.disabled"
        assert payload["data"]["webhook_id"] == hook["id"]
        assert payload["data"]["failing_since"] == state["failing_since"]
        # The delivery that was still retrying is held, not failed.
        counts = _until(lambda: (c := _counts(api, hook["id"]))["pending"] == 0 and c)
        assert counts == {"pending": 0, "held": 1, "succeeded": 0, "failed": 0, "discarded": 0}
        catalog = api.get("/api/v1/event-types").json
        names = [t["name"] for t in catalog.get("items", catalog)]
        assert "webhook.disabled" in names
    finally:
        worker.stop()
        failing.close()


def test_recover_validates_its_input(api, integration, receiver):
    hook = _hook(api, integration, receiver.url)
    url = f"/api/v1/webhooks/{hook['id']}/recover"
    for body in ({}, {"since": "yesterday"}, {"since": "2999-01-01T00:00:00Z"}):
        res = api.post(url, json=body)
        assert res.status_code == 422, body
        assert res.content_type == "application/problem+json"
    missing = api.post("/api/v1/webhooks/wh_missing/recover", json={"since": "2020-01-01T00:00Z"})
    assert missing.status_code == 404
    res = api.post(url, json={"since": "2020-01-01T00:00:00+02:00"})
    assert res.status_code == 202 and res.json == {"requeued": 0}
