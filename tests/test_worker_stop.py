"""A worker asked to stop exits within seconds, whatever its receivers do, and loses nothing.

Each round starts a real ``worker.py``, lets it get a send stuck on a receiver that does not
answer, and sends SIGTERM (what Kubernetes and systemd send): the worker must exit within
``BOUND`` seconds (a 30 s grace period would otherwise end in SIGKILL mid-send). What it had in
flight is handed back at once — recorded as an attempt ("worker stopped") and sent again by the
next worker — so after the rounds every event reaches both receivers and no lease is left.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from app.events.dispatch import WORKER_STOPPED
from app.store.db import database
from app.store.models import Delivery
from tests.peers import Receiver, WorkerProcess

ROUNDS = 20
BOUND = 5.0


def _hook(api: Any, integration: dict[str, Any], url: str, **kw: Any) -> dict[str, Any]:
    body = {"url": url, "events": ["order.paid"], "integration_id": integration["id"], **kw}
    res = api.post("/api/v1/webhooks", json=body)
    assert res.status_code == 201, res.json
    return dict(res.json)


@pytest.mark.slow
def test_a_busy_worker_stops_within_seconds_every_time_and_loses_nothing(
    app: Any, api: Any, integration: dict[str, Any], receiver: Receiver
) -> None:
    release = threading.Event()
    stuck = Receiver(lambda req, n: (release.wait(120), (200, {}, b"late"))[1])
    api.post("/api/v1/event-types", json={"name": "order.paid"})
    hanging = _hook(api, integration, stuck.url, timeout_ms=60000, retry_count=20)
    _hook(api, integration, receiver.url)
    published: list[str] = []
    took: list[float] = []
    try:
        for n in range(ROUNDS):
            worker = WorkerProcess(app)
            try:
                seen = len(stuck.requests)
                published.append(
                    api.post("/api/v1/events", json={"type": "order.paid", "data": {"n": n}}).json[
                        "id"
                    ]
                )
                # Busy: a send of this worker hangs on the receiver that does not answer.
                stuck.wait_for(lambda r, seen=seen: len(r) > seen, timeout=60)
                started = time.monotonic()
                worker.proc.send_signal(signal.SIGTERM)
                worker.proc.wait(timeout=30)
                took.append(time.monotonic() - started)
            finally:
                worker.kill()
        assert max(took) < BOUND, took
        release.set()
        last = WorkerProcess(app)
        try:
            receiver.wait_for(lambda r: len(r) >= ROUNDS, timeout=60)

            def settled() -> list[Any]:
                with app.app_context(), database.connection_context():
                    rows = list(Delivery.of("ten_default").where(Delivery.webhook == hanging["id"]))
                done = all(row.status == "succeeded" and row.lease_token is None for row in rows)
                return rows if done and len(rows) == ROUNDS else []

            rows = _wait(settled, "every delivery to the hanging receiver succeeded, unleased")
        finally:
            last.stop()
    finally:
        release.set()
        stuck.close()
    assert sorted(r.headers["webhook-id"] for r in receiver.requests) == sorted(published)
    assert {r.headers["webhook-id"] for r in stuck.requests} == set(published)
    history = api.get(f"/api/v1/webhooks/{hanging['id']}/deliveries?limit=50").json["items"]
    handed_back = [
        attempt
        for delivery in history
        for attempt in delivery["attempt_history"]
        if (attempt["error"] or "").startswith(WORKER_STOPPED)
    ]
    assert len(handed_back) >= ROUNDS  # each round's stuck send is in the history
    assert all(d["status"] == "succeeded" for d in history) and len(history) == ROUNDS
    assert rows


def _wait(check: Any, what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")
