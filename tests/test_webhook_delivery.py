"""Webhook delivery by real worker processes: retries, 410, timeouts, redirects, nothing lost."""

from __future__ import annotations

import time

import pytest
import redis
import standardwebhooks

from app.store.db import database
from app.store.models import Delivery, Webhook
from tests.conftest import session_redis_url
from tests.peers import Receiver, WorkerProcess


@pytest.fixture()
def publish(api):
    api.post("/api/v1/event-types", json={"name": "order.paid", "description": "paid"})

    def _publish(n=1, **data):
        ids = []
        for i in range(n):
            res = api.post("/api/v1/events", json={"type": "order.paid", "data": {"i": i, **data}})
            assert res.status_code == 202, res.json
            ids.append(res.json["id"])
        return ids

    return _publish


def _hook(api, integration, url, **kw):
    body = {"url": url, "events": ["order.paid"], "integration_id": integration["id"], **kw}
    res = api.post("/api/v1/webhooks", json=body)
    assert res.status_code == 201, res.json
    return res.json


def _deliveries(api, hook_id, **query):
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return api.get(f"/api/v1/webhooks/{hook_id}/deliveries?{qs}").json


def _wait_delivery(api, hook_id, status, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        items = _deliveries(api, hook_id)["items"]
        if items and all(d["status"] == status for d in items):
            return items
        time.sleep(0.1)
    raise AssertionError(f"deliveries not {status}: {_deliveries(api, hook_id)}")


def test_retries_keep_webhook_id_and_verify(api, integration, publish, worker):
    peer = Receiver(lambda req, n: (500, {}, b"boom") if n <= 2 else (200, {}, b"thanks"))
    try:
        hook = _hook(api, integration, peer.url, retry_count=3)
        [event_id] = publish(1)
        got = peer.wait_for(lambda r: len(r) >= 3)
        assert {r.headers["webhook-id"] for r in got} == {event_id}
        for req in got:
            payload = standardwebhooks.Webhook(hook["secret"]).verify(req.body, req.headers)
            assert payload["type"] == "order.paid" and payload["data"] == {"i": 0}
            assert payload["timestamp"].endswith("Z")
        [delivery] = _wait_delivery(api, hook["id"], "succeeded")
        assert delivery["attempts"] == 3 and delivery["event_id"] == event_id
        history = delivery["attempt_history"]
        assert [a["status_code"] for a in history] == [500, 500, 200]
        assert history[0]["response_body"] == "boom" and history[0]["next_attempt_at"]
        assert history[2]["next_attempt_at"] is None
        logs = api.get(
            f"/api/v1/logs?integration_id={integration['id']}&event_type=webhook.delivery"
        ).json
        assert [entry["status"] for entry in logs["items"]] == ["success", "pending", "pending"]
    finally:
        peer.close()


def test_410_disables_webhook_and_emits_event(api, integration, publish, worker, receiver):
    watcher = _hook(api, integration, receiver.url, events=["webhook.disabled"])
    gone = Receiver(lambda req, n: (410, {}, b"gone"))
    try:
        hook = _hook(api, integration, gone.url, retry_count=5)
        publish(1)
        [delivery] = _wait_delivery(api, hook["id"], "held")
        assert delivery["attempts"] == 1
        state = api.get(f"/api/v1/webhooks/{hook['id']}").json
        assert state["status"] == "disabled" and "410" in state["disabled_reason"]
        got = receiver.wait_for(lambda r: len(r) >= 1)
        payload = standardwebhooks.Webhook(watcher["secret"]).verify(got[0].body, got[0].headers)
        assert payload["type"] == "webhook.disabled" and payload["data"]["webhook_id"] == hook["id"]
        # A disabled webhook's deliveries are held (this one too); re-enabling sends them.
        publish(1)
        assert _deliveries(api, hook["id"], status="held", count="true")["total"] == 2
    finally:
        gone.close()


def test_timeout_and_redirect_are_failures(api, integration, publish, worker, receiver):
    slow = Receiver(lambda req, n: (time.sleep(3), (200, {}, b"late"))[1])
    redirecting = Receiver(lambda req, n: (302, {"Location": receiver.url + "/elsewhere"}, b""))
    try:
        slow_hook = _hook(api, integration, slow.url, retry_count=0, timeout_ms=300)
        redirect_hook = _hook(api, integration, redirecting.url, retry_count=0)
        publish(1)
        [timed_out] = _wait_delivery(api, slow_hook["id"], "failed")
        attempt = timed_out["attempt_history"][0]
        assert "timed out after 300 ms" in attempt["error"]
        assert attempt["response_time_ms"] < 2500
        [redirected] = _wait_delivery(api, redirect_hook["id"], "failed")
        assert redirected["last_status_code"] == 302 and "not followed" in redirected["last_error"]
        assert receiver.requests == []  # the redirect target was never called
    finally:
        slow.close()
        redirecting.close()


def test_retry_after_is_honoured(api, integration, publish, worker):
    peer = Receiver(
        lambda req, n: (429, {"Retry-After": "2"}, b"slow down") if n == 1 else (200, {}, b"")
    )
    try:
        _hook(api, integration, peer.url, retry_count=2)
        publish(1)
        got = peer.wait_for(lambda r: len(r) >= 2)
        assert got[1].at - got[0].at >= 1.9
    finally:
        peer.close()


def test_manual_retry_redelivers_same_id(api, integration, publish, worker):
    peer = Receiver(lambda req, n: (500, {}, b"") if n == 1 else (200, {}, b""))
    try:
        hook = _hook(api, integration, peer.url, retry_count=0)
        [event_id] = publish(1)
        [failed] = _wait_delivery(api, hook["id"], "failed")
        res = api.post(f"/api/v1/deliveries/{failed['id']}/retry")
        assert res.status_code == 202 and res.json["status"] == "pending"
        [done] = _wait_delivery(api, hook["id"], "succeeded")
        assert done["attempts"] == 2
        assert [r.headers["webhook-id"] for r in peer.requests] == [event_id, event_id]
        assert api.post("/api/v1/deliveries/dlv_missing/retry").status_code == 404
    finally:
        peer.close()


def test_rate_limited_webhook_waits_never_drops(api, integration, publish, worker, receiver):
    _hook(api, integration, receiver.url, rate_limit_per_second=5)
    started = time.time()
    publish(15)
    got = receiver.wait_for(lambda r: len({x.headers["webhook-id"] for x in r}) >= 15, timeout=20)
    # The worker admits at most 5 in each second of its clock; 15 take three such seconds, the
    # first of which began no earlier than the publishing did.
    assert got[-1].at >= int(started) + 2
    # A delivery admitted late in one second may arrive early in the next on a busy machine, so
    # a second of the receiver's clock sees the deliveries of at most two seconds of admission.
    by_second: dict[int, int] = {}
    for req in got:
        by_second[int(req.at)] = by_second.get(int(req.at), 0) + 1
    assert max(by_second.values()) <= 2 * 5, by_second


def test_delivery_time_ssrf_refusal(app, api, integration, publish, monkeypatch):
    """A URL that passed at creation is checked again at the connection (DNS rebinding)."""
    hook = _hook(api, integration, "http://127.0.0.1:9/never")
    strict = WorkerProcess(app, SWITCHBOARD_ALLOWED_NETWORKS="")
    try:
        publish(1)
        [failed] = _wait_delivery(api, hook["id"], "failed")
        error = failed["attempt_history"][0]["error"]
        assert error.startswith("destination refused by the outbound guard")
    finally:
        strict.stop()


@pytest.mark.slow
def test_nothing_lost_when_workers_die_and_redis_is_flushed(
    app, api, integration, publish, receiver
):
    """SIGKILL a worker and flush Redis mid-run; every event still arrives at least once."""
    _hook(api, integration, receiver.url, retry_count=5, timeout_ms=2000)
    first = WorkerProcess(app)
    second = WorkerProcess(app)
    try:
        ids = set(publish(150))
        receiver.wait_for(lambda r: len(r) >= 20, timeout=30)
        first.kill()
        redis.Redis.from_url(session_redis_url()).flushdb()
        ids |= set(publish(150))
        second.kill()
        redis.Redis.from_url(session_redis_url()).flushdb()
        restarted = WorkerProcess(app)
        try:
            got = receiver.wait_for(
                lambda r: {x.headers["webhook-id"] for x in r} >= ids, timeout=60
            )
            assert {x.headers["webhook-id"] for x in got} == ids
            with app.app_context(), database.connection_context():
                deadline = time.time() + 15
                while (
                    Delivery.select().where(Delivery.status != "succeeded").count()
                    and time.time() < deadline
                ):
                    time.sleep(0.2)
                assert Delivery.select().where(Delivery.status != "succeeded").count() == 0
                assert Webhook.select().where(Webhook.status == "active").count() == 1
        finally:
            restarted.stop()
    finally:
        first.stop()
        second.stop()


def test_a_delivery_deleted_mid_flight_does_not_sink_its_batch(
    app, api, integration, publish, receiver
):
    """Deleting a webhook while its delivery is being sent: the rest of the batch is recorded."""
    from app.events.dispatch import claim_due, perform, record_outcomes

    doomed = _hook(api, integration, receiver.url)
    kept = _hook(api, integration, receiver.url)
    publish(1)
    with app.app_context(), database.connection_context():
        batch = claim_due(32)
        assert len(batch) == 2
        results = [perform(item) for item in batch]
        api.delete(f"/api/v1/webhooks/{doomed['id']}")
        record_outcomes(batch, results)
        assert Delivery.get(Delivery.webhook == kept["id"]).status == "succeeded"


def test_a_dripping_receiver_cannot_hold_a_send_past_its_lease(app, api, integration, publish):
    """Each read arrives before timeout_ms, but the answer never completes: the send is cut."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def drip():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        while not stop.wait(0.1):
            try:
                conn.sendall(b"X-Drip: 1\r\n")
            except OSError:
                break
        conn.close()

    threading.Thread(target=drip, daemon=True).start()
    from app.events.dispatch import Dispatcher

    try:
        hook = _hook(
            api, integration, f"http://127.0.0.1:{listener.getsockname()[1]}/", timeout_ms=300
        )
        publish(1)
        with app.app_context(), database.connection_context():
            # Claims for 1 s, then waits for what is in flight: the dripping send is cut.
            Dispatcher().run(time.monotonic() + 1)
        [delivery] = _deliveries(api, hook["id"])["items"]
        assert delivery["attempt_history"][0]["error"] == "no complete answer within 1.3 s"
    finally:
        stop.set()
        listener.close()
