"""Ordered (fifo) delivery: one at a time per queue, in event order, whatever happens.

Real worker processes send to a receiver that records arrival order and how many requests of
one queue it holds at once, while it fails some first attempts (retries), hangs one send until
the worker holding it is SIGKILLed (its lease lapses, the head is sent again), and a webhook
without ordering keeps flowing beside it. Then: a delivery whose retries are spent lets the
next one go, a disabled endpoint keeps its order until enabled, a retried delivery waits for
its turn, and the reconciler gives a stalled queue its head.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter, defaultdict
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.events.reconciler import promote_stalled_queues
from app.store.db import database
from app.store.models import Delivery, Event, utcnow
from tests.conftest import ApiClient
from tests.peers import WorkerProcess

HOOKS = "/api/v1/webhooks"


class OrderReceiver:
    """Records (order_id, n) of each arrival, in order, with the sending socket's port; fails
    the first attempt of ``fail_first``, every attempt of ``fail_always``, and holds the first
    attempt of ``hang`` until ``release`` is set."""

    def __init__(
        self,
        fail_first: set[tuple[str, int]] = frozenset(),  # type: ignore[assignment]
        fail_always: set[tuple[str, int]] = frozenset(),  # type: ignore[assignment]
        hang: tuple[str, int] | None = None,
    ) -> None:
        self.arrivals: list[tuple[str, int, int]] = []  # (key, n, client port)
        self.delivered: set[tuple[str, int]] = set()
        self.in_flight: Counter[str] = Counter()
        self.most_at_once: Counter[str] = Counter()
        self.release = threading.Event()
        self.lock = threading.Lock()
        rng = random.Random(22)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                item = (str(body["data"].get("order_id", "")), int(body["data"]["n"]))
                with receiver.lock:
                    first = all(a[:2] != item for a in receiver.arrivals)
                    receiver.arrivals.append((*item, self.client_address[1]))
                    receiver.in_flight[item[0]] += 1
                    receiver.most_at_once[item[0]] = max(
                        receiver.most_at_once[item[0]], receiver.in_flight[item[0]]
                    )
                try:
                    if first and item == hang:
                        receiver.release.wait(60)
                    time.sleep(rng.uniform(0.005, 0.03))  # widen the window for overlaps
                    failing = item in fail_always or (first and item in fail_first)
                finally:
                    with receiver.lock:
                        receiver.in_flight[item[0]] -= 1
                        if not failing:
                            receiver.delivered.add(item)
                status = 500 if failing else 204
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # its sender was killed meanwhile
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def order(self, key: str) -> list[int]:
        with self.lock:
            return [n for k, n, _ in self.arrivals if k == key]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def wait_until(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def holder_of(port: int, workers: list[WorkerProcess]) -> WorkerProcess:
    """The worker process whose socket has local port ``port`` (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    for worker in workers:
        folder = f"/proc/{worker.proc.pid}/fd"
        for fd in os.listdir(folder):
            try:
                if os.readlink(f"{folder}/{fd}") in inodes:
                    return worker
            except OSError:
                continue
    raise AssertionError(f"no worker holds the socket of port {port}")


def _hook(api: ApiClient, integration: dict[str, Any], url: str, **extra: Any) -> dict[str, Any]:
    body = {"url": url, "events": ["order.*"], "integration_id": integration["id"], **extra}
    res = api.post(HOOKS, json=body)
    assert res.status_code == 201, res.json
    return dict(res.json)


def _publish(api: ApiClient, data: dict[str, Any]) -> None:
    res = api.post("/api/v1/events", json={"type": "order.paid", "data": data})
    assert res.status_code == 202, res.json


def _deliveries(app: Any, webhook_id: str) -> dict[int, Delivery]:
    """The webhook's deliveries by their event's ``n``, in event order."""
    with app.app_context(), database.connection_context():
        rows = (
            Delivery.select(Delivery, Event)
            .join(Event)
            .where(Delivery.webhook == webhook_id)
            .order_by(Event.created_at, Delivery.ordering_seq)
        )
        return {row.event.payload["n"]: row for row in rows}


def _statuses(app: Any, webhook_id: str) -> list[tuple[int, str]]:
    return [(n, d.status) for n, d in _deliveries(app, webhook_id).items()]


@pytest.fixture(autouse=True)
def order_type(api: ApiClient) -> None:
    assert api.post("/api/v1/event-types", json={"name": "order.paid"}).status_code == 201


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_fifo_holds_under_three_workers_a_killed_sender_and_retries(
    app: Any, api: ApiClient, integration: dict[str, Any], receiver: Any
) -> None:
    keys, per_key = ["A", "B", "C", "D"], 8
    orders = OrderReceiver(fail_first={("A", 3), ("B", 5), ("C", 1)}, hang=("D", 4))
    fifo = _hook(
        api,
        integration,
        orders.url,
        ordering="fifo",
        ordering_key="data.order_id",
        retry_count=5,
        timeout_ms=20000,
    )
    plain = _hook(api, integration, receiver.url)  # no ordering: must never wait for D
    workers = [WorkerProcess(app) for _ in range(3)]
    try:
        for n in range(per_key):
            for key in keys:
                _publish(api, {"order_id": key, "n": n})
        # D's 5th send hangs; everything else keeps flowing meanwhile.
        wait_until(lambda: ("D", 4) in {a[:2] for a in orders.arrivals}, 90, "D/4 to arrive")
        wait_until(lambda: len(receiver.requests) >= len(keys) * per_key, 90, "the plain hook")
        others = {(k, n) for k in "ABC" for n in range(per_key)}
        wait_until(lambda: others <= orders.delivered, 90, "the other queues to drain")
        assert orders.order("D") == [0, 1, 2, 3, 4]  # D waits behind its stuck head
        port = next(p for k, n, p in orders.arrivals if (k, n) == ("D", 4))
        doomed = holder_of(port, workers)
        doomed.kill()
        workers.remove(doomed)
        workers.append(WorkerProcess(app))
        orders.release.set()
        everything = {(k, n) for k in keys for n in range(per_key)}
        wait_until(lambda: everything <= orders.delivered, 120, "every event delivered")
    finally:
        orders.close()
        for worker in workers:
            worker.stop()
    for key in keys:
        sequence = orders.order(key)
        assert sequence == sorted(sequence), (key, sequence)  # in order, repeats in place
        assert set(sequence) == set(range(per_key))
        assert orders.most_at_once[key] == 1, (key, orders.most_at_once)
    assert orders.order("D").count(4) == 2  # the killed send, then its resend
    for key in ("A", "B", "C"):
        assert len(orders.order(key)) == per_key + 1  # one failed first attempt each
    with app.app_context(), database.connection_context():
        rows = Delivery.select(Delivery.status).where(Delivery.webhook == fifo["id"])
        assert Counter(row.status for row in rows) == {"succeeded": len(keys) * per_key}
    assert plain["ordering"] == "none"


def test_a_failed_delivery_lets_the_next_go_and_a_disabled_endpoint_keeps_order(
    app: Any, api: ApiClient, integration: dict[str, Any]
) -> None:
    orders = OrderReceiver(fail_always={("", 1)})
    hook = _hook(api, integration, orders.url, ordering="fifo", retry_count=1)
    worker = WorkerProcess(app)
    try:
        for n in range(4):
            _publish(api, {"n": n})
        wait_until(lambda: {("", n) for n in (0, 2, 3)} <= orders.delivered, 60, "0, 2 and 3")
        assert orders.order("") == [0, 1, 1, 2, 3]  # 1's two attempts, then the next one
        assert dict(_statuses(app, hook["id"]))[1] == "failed"
        api.patch(f"{HOOKS}/{hook['id']}", json={"status": "disabled"})
        for n in range(4, 7):
            _publish(api, {"n": n})
        assert _statuses(app, hook["id"])[4:] == [(4, "held"), (5, "queued"), (6, "queued")]
        enabled = api.post(f"{HOOKS}/{hook['id']}/enable", json={})
        assert enabled.status_code == 200, enabled.json
        wait_until(lambda: {("", n) for n in (4, 5, 6)} <= orders.delivered, 60, "4, 5 and 6")
        assert orders.order("")[5:] == [4, 5, 6]
    finally:
        worker.stop()
        orders.close()


def test_queues_without_a_worker_heads_retries_and_the_safety_net(
    app: Any, api: ApiClient, integration: dict[str, Any], receiver: Any
) -> None:
    hook = _hook(api, integration, receiver.url, ordering="fifo", ordering_key="data.order_id")
    for n, key in enumerate(["x", "y", "x", "x", "y"]):
        _publish(api, {"order_id": key, "n": n})
    assert _statuses(app, hook["id"]) == [
        (0, "pending"),
        (1, "pending"),
        (2, "queued"),
        (3, "queued"),
        (4, "queued"),
    ]
    items = {n: d.id for n, d in _deliveries(app, hook["id"]).items()}
    with app.app_context(), database.connection_context():
        # As if 0 had failed for good and its promotion been lost with its process.
        Delivery.update(status="failed", updated_at=utcnow() - timedelta(minutes=5)).where(
            Delivery.id == items[0]
        ).execute()
        Delivery.update(updated_at=utcnow() - timedelta(minutes=5)).where(
            Delivery.id == items[2]
        ).execute()
        assert promote_stalled_queues() == 1
    assert dict(_statuses(app, hook["id"]))[2] == "pending"
    # Sent again by hand, 0 waits for its turn: after the head, before 3 (event order).
    retried = api.post(f"/api/v1/deliveries/{items[0]}/retry")
    assert retried.status_code == 202 and retried.json["status"] == "queued"
    with app.app_context(), database.connection_context():
        Delivery.update(status="succeeded").where(Delivery.id == items[2]).execute()
    api.patch(f"{HOOKS}/{hook['id']}", json={"status": "disabled"})
    api.post(f"{HOOKS}/{hook['id']}/enable", json={"held": "send"})
    statuses = dict(_statuses(app, hook["id"]))
    assert statuses[0] == "pending" and statuses[3] == "queued"
    # Ordering settings are checked.
    bad = api.patch(f"{HOOKS}/{hook['id']}", json={"ordering_key": "data..id"})
    assert bad.status_code == 422 and "ordering_key" in bad.json["errors"]
    plain = api.post(
        HOOKS,
        json={
            "url": receiver.url,
            "events": ["order.*"],
            "integration_id": integration["id"],
            "ordering_key": "data.order_id",
        },
    )
    assert plain.status_code == 422 and "ordering_key" in plain.json["errors"]


def test_orders_by_key_keep_their_own_queue(
    app: Any, api: ApiClient, integration: dict[str, Any]
) -> None:
    hook = _hook(
        api, integration, "http://127.0.0.1:9/hooks", ordering="fifo", ordering_key="data.order_id"
    )
    for n, data in enumerate([{"order_id": 1}, {"order_id": "1"}, {}, {"order_id": None}, {}]):
        _publish(api, {**data, "n": n})
    # 1 and "1" are different values; a missing key and null share no queue with them.
    by_n = dict(_statuses(app, hook["id"]))
    assert [by_n[n] for n in range(5)] == ["pending", "pending", "pending", "pending", "queued"]
    seen: defaultdict[str, int] = defaultdict(int)
    for _, status in _statuses(app, hook["id"]):
        seen[status] += 1
    assert seen == {"pending": 4, "queued": 1}
