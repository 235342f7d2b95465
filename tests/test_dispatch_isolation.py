"""Dispatcher isolation, crash recovery and guard refusals, with real worker processes.

Assertions are on ordering and attempt records, never on tight timings: bounds are generous
waits that the old behaviour (a whole batch waiting for its slowest send, leases as long as
the longest timeout plus 30 s) could not meet.
"""

from __future__ import annotations

import threading
import time

from app.events.dispatch import WORKER_LOST
from app.outbound.guard import REFUSED
from tests.peers import Receiver, WorkerProcess

INTS = "/api/v1/integrations"


def _setup(api):
    api.post("/api/v1/event-types", json={"name": "order.paid", "description": "paid"})


def _publish(api, **data):
    res = api.post("/api/v1/events", json={"type": "order.paid", "data": data})
    assert res.status_code == 202, res.json
    return res.json["id"]


def _hook(api, integration, url, **kw):
    body = {"url": url, "events": ["order.paid"], "integration_id": integration["id"], **kw}
    res = api.post("/api/v1/webhooks", json=body)
    assert res.status_code == 201, res.json
    return res.json


def _deliveries(api, hook_id):
    return api.get(f"/api/v1/webhooks/{hook_id}/deliveries").json["items"]


def _wait(condition, timeout=20, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not met in {timeout}s")


def _hanging_receiver(release: threading.Event, hang_first: int = 10**9) -> Receiver:
    """Requests up to number ``hang_first`` hang until ``release`` is set; later ones get 200."""

    def respond(req, n):
        if n <= hang_first:
            release.wait(60)
        return 200, {}, b"ok"

    return Receiver(respond)


def test_a_slow_endpoint_does_not_hold_back_a_healthy_one(app, api, integration, receiver):
    """With one worker, healthy deliveries land and are recorded while the slow send hangs."""
    _setup(api)
    release = threading.Event()
    slow_peer = _hanging_receiver(release)
    slow = _hook(api, integration, slow_peer.url, timeout_ms=30000)
    healthy = _hook(api, integration, receiver.url)
    worker = WorkerProcess(app)
    try:
        first = _publish(api, n=1)
        slow_peer.wait_for(lambda r: len(r) >= 1, timeout=30)
        # The first event's healthy delivery is recorded although its batch-mate still hangs.
        _wait(
            lambda: [d for d in _deliveries(api, healthy["id"]) if d["status"] == "succeeded"],
            what="healthy delivery recorded",
        )
        # New work is claimed and sent while the slow send is still in flight.
        second = _publish(api, n=2)
        got = receiver.wait_for(lambda r: len(r) >= 2, timeout=20)
        assert [r.headers["webhook-id"] for r in got] == [first, second]
        _wait(
            lambda: (
                all(d["status"] == "succeeded" for d in _deliveries(api, healthy["id"]))
                and len(_deliveries(api, healthy["id"])) == 2
            ),
            what="both healthy deliveries recorded",
        )
        assert not release.is_set()
        slow_items = _deliveries(api, slow["id"])
        assert all(d["status"] == "pending" and d["attempts"] == 0 for d in slow_items)
    finally:
        release.set()
        worker.stop()
        slow_peer.close()


def test_a_sigkilled_worker_s_in_flight_delivery_is_resent_by_another(
    app, api, integration, receiver
):
    """Only the send in flight is repeated, by the surviving worker, within a short lease."""
    _setup(api)
    release = threading.Event()
    hanging = _hanging_receiver(release, hang_first=1)
    # The old lease was the longest timeout_ms plus a margin: 30 s + 1 s here.
    stuck = _hook(api, integration, hanging.url, timeout_ms=30000)
    done = _hook(api, integration, receiver.url)
    doomed = WorkerProcess(app)
    survivor = None
    try:
        event_id = _publish(api, n=1)
        hanging.wait_for(lambda r: len(r) >= 1, timeout=30)
        _wait(
            lambda: [d for d in _deliveries(api, done["id"]) if d["status"] == "succeeded"],
            what="the healthy delivery recorded",
        )
        doomed.kill()
        survivor = WorkerProcess(app)
        # Within a 3 s lease plus a reconciler pass; the old lease alone was 31 s here.
        got = hanging.wait_for(lambda r: len(r) >= 2, timeout=25)
        assert [r.headers["webhook-id"] for r in got] == [event_id, event_id]
        [delivery] = _wait(
            lambda: [d for d in _deliveries(api, stuck["id"]) if d["status"] == "succeeded"],
            what="the resent delivery recorded",
        )
        # The killed worker's attempt is recorded as lost (with its lease), then the survivor's.
        assert delivery["attempts"] == 2
        lost, sent = delivery["attempt_history"]
        assert lost["status_code"] is None and lost["error"].startswith(WORKER_LOST)
        assert "lease lease_" in lost["error"]
        assert sent["status_code"] == 200 and sent["error"] is None
        logs = api.get(f"/api/v1/integrations/{integration['id']}/logs").json["items"]
        lost_logs = [e for e in logs if (e["error_message"] or "").startswith(WORKER_LOST)]
        assert [e["event_data"]["delivery_id"] for e in lost_logs] == [delivery["id"]], logs
        # The healthy delivery, recorded before the crash, was not sent again.
        time.sleep(1)
        assert [r.headers["webhook-id"] for r in receiver.requests] == [event_id]
    finally:
        release.set()
        doomed.kill()
        if survivor is not None:
            survivor.stop()
        hanging.close()


def test_a_guard_refused_delivery_fails_once_until_retried_or_its_url_changes(
    app, api, integration, receiver
):
    """A refusal is final (one attempt, no retry scheduled); ``/retry`` or a new URL re-sends."""
    _setup(api)
    hook = _hook(api, integration, receiver.url, retry_count=3)
    strict = WorkerProcess(app, SWITCHBOARD_ALLOWED_NETWORKS="")
    try:
        first, second = _publish(api, n=1), _publish(api, n=2)
        refused = _wait(
            lambda: (
                len(items := _deliveries(api, hook["id"])) == 2
                and all(d["status"] == "failed" for d in items)
                and items
            ),
            what="both refused deliveries failed",
        )
    finally:
        strict.stop()
    for failed in refused:
        assert failed["attempts"] == 1 and failed["last_error"] == REFUSED
        [attempt] = failed["attempt_history"]
        assert attempt["error"] == REFUSED and attempt["next_attempt_at"] is None
    assert receiver.requests == []
    by_event = {d["event_id"]: d for d in refused}
    # Once the configuration allows the destination, a manual retry delivers one ...
    allowed = WorkerProcess(app)
    moved = Receiver()
    try:
        assert api.post(f"/api/v1/deliveries/{by_event[first]['id']}/retry").status_code == 202
        receiver.wait_for(lambda r: len(r) == 1, timeout=20)
        # ... and changing the URL re-queues the other refused one (not the delivered one).
        res = api.patch(f"/api/v1/webhooks/{hook['id']}", json={"url": moved.url + "/new"})
        assert res.status_code == 200, res.json
        got = moved.wait_for(lambda r: len(r) == 1, timeout=20)
        assert got[0].headers["webhook-id"] == second
        _wait(
            lambda: all(d["status"] == "succeeded" for d in _deliveries(api, hook["id"])),
            what="both deliveries succeeded",
        )
        assert [r.headers["webhook-id"] for r in receiver.requests] == [first]
    finally:
        allowed.stop()
        moved.close()


def test_a_guard_refused_action_is_not_retried(app, api, receiver):
    """A GET through the rest connector is normally retried; a guard refusal never is."""
    created = api.post(
        INTS,
        json={
            "name": "internal api",
            "status": "active",
            "type": "api",
            "provider": "rest",
            "config": {"upstreams": [{"url": receiver.url}]},
        },
    )
    assert created.status_code == 201, created.json
    integration_id = created.json["id"]
    strict = WorkerProcess(app, SWITCHBOARD_ALLOWED_NETWORKS="")
    try:
        res = api.post(
            f"{INTS}/{integration_id}/actions/request", json={"method": "GET", "path": "/"}
        )
        assert res.status_code == 202, res.json
        job = _wait(
            lambda: (
                (j := api.get(f"/api/v1/jobs/{res.json['job_id']}").json)["status"]
                in ("finished", "failed")
                and j
            ),
            what="the action job ended",
        )
    finally:
        strict.stop()
    assert job["status"] == "failed" and job["attempts"] == 1, job
    logs = api.get(f"{INTS}/{integration_id}/logs?event_type=action.request").json["items"]
    assert [(entry["status"], entry["error_message"]) for entry in logs] == [("error", REFUSED)]
    assert receiver.requests == []
