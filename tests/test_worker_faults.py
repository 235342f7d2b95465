"""Workers and the API through store faults: real worker.py processes, private Redis and PostgreSQL.

Redis or PostgreSQL is killed under publishing load and started again; the same worker processes
(same pids) must carry on and every published event must reach the receiver (at least once).
While a store is down the API answers 503 with ``Retry-After``, never 500.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from app import create_app
from app.workers.liveness import live_workers
from tests.conftest import ApiClient, create_github_integration, make_key, make_user
from tests.peers import ROOT, GunicornServer, Receiver, worker_env
from tests.pg_server import PostgresServer, find_binaries
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.faults, pytest.mark.slow]

EVENTS = 150
RATE = 50  # events per second


def wait_until(condition: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not reached in {timeout} s: {what}"
        time.sleep(0.1)


class Worker:
    """A real ``python worker.py`` process whose output goes to a log file."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603
                [sys.executable, str(ROOT / "worker.py"), *args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


class Publisher(threading.Thread):
    """Publishes ``EVENTS`` events at ``RATE``/s, retrying each 503 with its Idempotency-Key."""

    def __init__(self, post: Callable[[int], tuple[int, dict[str, Any], dict[str, str]]]) -> None:
        super().__init__(daemon=True)
        self.post = post
        self.statuses: list[int] = []
        self.ids: dict[int, str] = {}
        self.duplicates = 0

    def run(self) -> None:
        for n in range(EVENTS):
            started = time.monotonic()
            while True:
                status, body, headers = self.post(n)
                self.statuses.append(status)
                if status == 202:
                    self.ids[n] = body["id"]
                    self.duplicates += bool(body["duplicate"])
                    break
                assert status == 503 and headers.get("Retry-After"), (status, body)
                time.sleep(0.2)  # shorter than Retry-After: the test wants to see the outage
            time.sleep(max(0.0, 1 / RATE - (time.monotonic() - started)))


def slow_ok(req: Any, n: int) -> tuple[int, dict[str, str], bytes]:
    time.sleep(0.02)  # keeps the workers busy when the store goes away
    return 200, {}, b"ok"


def received_ids(receiver: Receiver) -> set[str]:
    return {r.headers["webhook-id"] for r in list(receiver.requests)}


def assert_every_event_arrived(receiver: Receiver, publisher: Publisher) -> None:
    publisher.join(120)
    assert not publisher.is_alive() and len(publisher.ids) == EVENTS
    wanted = set(publisher.ids.values())
    wait_until(lambda: wanted <= received_ids(receiver), 90, "every event delivered")


def assert_quiet_survivors(workers: list[Worker], pids: list[int]) -> None:
    assert sorted(w.pid for w in workers if w.alive()) == pids, [w.proc.poll() for w in workers]
    for worker in workers:
        text = worker.log()
        assert "unhandled exception" not in text and "Traceback" not in text, text[-3000:]


@pytest.fixture()
def slow_receiver() -> Any:
    peer = Receiver(slow_ok)
    yield peer
    peer.close()


def test_workers_survive_a_redis_restart_under_load(
    app: Any, tmp_path: Path, slow_receiver: Receiver
) -> None:
    private = RedisServer(tmp_path / "redis")
    private.start()
    workers: list[Worker] = []
    try:
        faulty = create_app({**app.config, "REDIS_URL": private.url()})
        operator = make_user(app, "ops@example.com", role="admin", platform_admin=True)
        key = make_key(app, operator, ["admin"], platform=True)  # sees the workers' pids
        api = ApiClient(faulty.test_client(), key)
        assert api.post("/api/v1/event-types", json={"name": "order.paid"}).status_code == 201
        hook = {"url": slow_receiver.url, "events": ["order.paid"], "retry_count": 8}
        hook["integration_id"] = create_github_integration(api)["id"]
        assert api.post("/api/v1/webhooks", json=hook).status_code == 201
        env = worker_env(app, REDIS_URL=private.url())
        workers = [Worker(env, tmp_path / f"worker{i}.log") for i in range(3)]
        pids = sorted(w.pid for w in workers)
        wait_until(
            lambda: sorted(w["pid"] for w in api.get("/api/v1/ready").json["workers"]) == pids,
            what="every worker live",
        )

        def post(n: int) -> tuple[int, dict[str, Any], dict[str, str]]:
            res = api.post(
                "/api/v1/events",
                json={"type": "order.paid", "data": {"n": n}},
                headers={"Idempotency-Key": f"order-{n}"},
            )
            return res.status_code, res.json, dict(res.headers)

        publisher = Publisher(post)
        publisher.start()
        slow_receiver.wait_for(lambda reqs: len(reqs) >= 30, 60)
        private.stop()  # under load: deliveries in flight, publishes arriving
        time.sleep(2)
        private.start()  # empty: every queued job and registration is gone

        assert_every_event_arrived(slow_receiver, publisher)
        assert 503 in publisher.statuses and 500 not in publisher.statuses
        assert publisher.duplicates == 0  # no 503 hid a committed publish
        assert_quiet_survivors(workers, pids)
        client = redis.Redis.from_url(private.url())
        wait_until(
            lambda: (
                sorted(w["pid"] for w in live_workers(client, 60) if w["state"] == "working")
                == pids
            ),
            what="the same workers registered again",
        )
    finally:
        for worker in workers:
            worker.stop()
        private.close()


def _create_admin(env: dict[str, str]) -> str:
    done = subprocess.run(  # noqa: S603
        [str(Path(sys.executable).parent / "flask"), "--app", "app", "create-admin", "a@b.co"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def test_workers_and_api_survive_a_postgres_restart(
    app: Any, tmp_path: Path, slow_receiver: Receiver
) -> None:
    binaries = find_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL binaries (initdb, postgres) are not installed")
    pg = PostgresServer(binaries)
    workers: list[Worker] = []
    server: GunicornServer | None = None
    try:
        pg.start()
        pg.create_database("switchboard")
        env = worker_env(app, DATABASE_URL=pg.url("switchboard"))
        key = _create_admin(env)
        server = GunicornServer(app, tmp_path / "api.log", DATABASE_URL=pg.url("switchboard"))
        base = server.start() + "/api/v1"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        res = session.post(f"{base}/event-types", json={"name": "order.paid"}, timeout=10)
        assert res.status_code == 201, res.text
        integration = {"name": "gh", "type": "webhook", "provider": "github", "status": "active"}
        integration["config"] = {"webhook_secret": "s" * 24}
        res = session.post(f"{base}/integrations", json=integration, timeout=10)
        assert res.status_code == 201, res.text
        hook = {"url": slow_receiver.url, "events": ["order.paid"], "retry_count": 8}
        hook["integration_id"] = res.json()["id"]
        assert session.post(f"{base}/webhooks", json=hook, timeout=10).status_code == 201
        workers = [Worker(env, tmp_path / f"worker{i}.log") for i in range(2)]
        pids = sorted(w.pid for w in workers)
        wait_until(
            lambda: (
                sorted(
                    w["pid"] for w in session.get(f"{base}/ready", timeout=10).json()["workers"]
                )
                == pids
            ),
            what="every worker live",
        )

        def post(n: int) -> tuple[int, dict[str, Any], dict[str, str]]:
            res = session.post(
                f"{base}/events",
                json={"type": "order.paid", "data": {"n": n}},
                headers={"Idempotency-Key": f"order-{n}"},
                timeout=30,
            )
            return res.status_code, res.json(), dict(res.headers)

        publisher = Publisher(post)
        publisher.start()
        slow_receiver.wait_for(lambda reqs: len(reqs) >= 30, 60)
        pg.stop()
        down = session.get(f"{base}/webhooks", timeout=30)
        assert down.status_code == 503, down.text
        assert down.headers["Content-Type"] == "application/problem+json"
        assert down.headers["Retry-After"] and "database" in down.json()["detail"]
        ready = requests.get(f"{base}/ready", timeout=30)
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unavailable"
        time.sleep(2)
        pg.start()

        assert_every_event_arrived(slow_receiver, publisher)
        assert 503 in publisher.statuses and 500 not in publisher.statuses
        assert_quiet_survivors(workers, pids)
        assert "Traceback" not in (tmp_path / "api.log").read_text()
    finally:
        for worker in workers:
            worker.stop()
        if server is not None:
            server.stop()
        pg.close()


def test_a_fixed_name_restarts_at_once_after_sigkill(app: Any, tmp_path: Path) -> None:
    client = redis.Redis.from_url(app.config["REDIS_URL"])
    env = worker_env(app)

    def registered(pid: int) -> bool:
        rq_pid = client.hget("rq:worker:w1", "pid")
        live = [w for w in live_workers(client, 60) if w["name"] == "w1"]
        return rq_pid == str(pid).encode() and any(
            w["pid"] == pid and w["state"] == "working" for w in live
        )

    first = Worker(env, tmp_path / "first.log", "--name", "w1")
    second: Worker | None = None
    try:
        wait_until(lambda: registered(first.pid), what="first w1 registered")
        first.kill()
        second = Worker(env, tmp_path / "second.log", "--name", "w1")
        wait_until(lambda: registered(second.pid), what="second w1 registered")
        assert second.alive() and "There exists an active worker" not in second.log()
        assert "replacing a dead registration" in second.log()
    finally:
        first.kill()
        if second is not None:
            second.stop()


def test_ready_reports_workers_and_lag_and_fails_without_a_worker(
    app: Any,
    api: ApiClient,
    platform_key: str,
    integration: dict[str, Any],
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    strict = create_app({**app.config, "WORKER_STALE_AFTER": 2, "READY_REQUIRES_WORKER": True})
    ready = ApiClient(strict.test_client(), platform_key)  # an operator sees the workers
    assert api.post("/api/v1/event-types", json={"name": "order.paid"}).status_code == 201
    hook = {"url": receiver.url, "events": ["order.paid"], "integration_id": integration["id"]}
    assert api.post("/api/v1/webhooks", json=hook).status_code == 201
    assert api.post("/api/v1/events", json={"type": "order.paid", "data": {}}).status_code == 202

    res = ready.get("/api/v1/ready")
    assert res.status_code == 503 and res.content_type == "application/problem+json"
    assert res.json["checks"] == {
        "database": "ok",
        "redis": "ok",
        "workers": "none live",
        "dispatch": "ok",
    }
    assert res.json["workers"] == [] and res.json["oldest_due_delivery_age"] >= 0

    worker = Worker(worker_env(app, SWITCHBOARD_WORKER_STALE_AFTER="2"), tmp_path / "w.log")
    try:
        res = wait_until(
            lambda: (r := ready.get("/api/v1/ready")).status_code == 200 and r,
            what="ready with a worker",
        )
        assert [w["pid"] for w in res.json["workers"]] == [worker.pid]
        assert res.json["workers"][0]["last_heartbeat_age"] >= 0
        receiver.wait_for(lambda reqs: len(reqs) == 1)
        wait_until(
            lambda: ready.get("/api/v1/ready").json["oldest_due_delivery_age"] is None,
            what="nothing due once delivered",
        )
        worker.kill()
        res = wait_until(
            lambda: (r := ready.get("/api/v1/ready")).status_code == 503 and r,
            what="unready once the worker is gone",
        )
        assert res.json["checks"]["workers"] == "none live"
        relaxed = create_app(
            {**app.config, "WORKER_STALE_AFTER": 2, "READY_REQUIRES_WORKER": False}
        )
        res = relaxed.test_client().get("/api/v1/ready")
        assert res.status_code == 200 and res.json["checks"]["workers"] == "none live"
    finally:
        worker.kill()
