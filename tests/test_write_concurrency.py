"""Writes under load: a real gunicorn (several workers and threads) and a real worker delivering.

Key rotations and revocations, webhook and integration updates and webhook secret rotations run
fifty at a time while events are published several times a second. None may fail with a 5xx
(on SQLite that was ``database is locked``), and every revoked key is refused afterwards in
every gunicorn worker, however recently that worker verified and cached it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.conftest import make_key
from tests.peers import GunicornServer

EVENT_TYPE = "load.tick"
EACH = 10  # operations of each kind: 5 kinds, 50 concurrent writes


@pytest.fixture()
def base_url(app: Any, tmp_path: Any) -> Iterator[str]:
    server = GunicornServer(
        app,
        tmp_path / "gunicorn.log",
        workers=2,
        threads=4,
        SWITCHBOARD_INSTANCE_PATH=str(tmp_path / "instance"),
    )
    try:
        yield server.start()
    finally:
        server.stop()


class Client:
    """Thread-safe calls to the server with one key; every answer's status is recorded."""

    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.key = key
        self.statuses: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def call(self, kind: str, method: str, path: str, key: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        res = requests.request(method, self.base + path, headers=headers, timeout=120, **kw)
        with self._lock:
            self.statuses.append((kind, res.status_code))
        return res

    def server_errors(self) -> list[tuple[str, int]]:
        with self._lock:
            return [(kind, status) for kind, status in self.statuses if status >= 500]


def _setup(api: Client, receiver_url: str) -> tuple[str, list[str]]:
    """One integration, five webhooks subscribed to ``load.tick``; returns their ids."""
    res = api.call(
        "setup",
        "POST",
        "/api/v1/integrations",
        json={
            "name": "load",
            "type": "webhook",
            "provider": "github",
            "status": "active",
            "config": {"webhook_secret": "s" * 24},
        },
    )
    assert res.status_code == 201, res.text
    integration_id = res.json()["id"]
    res = api.call("setup", "POST", "/api/v1/event-types", json={"name": EVENT_TYPE})
    assert res.status_code == 201, res.text
    webhooks = []
    for n in range(5):
        res = api.call(
            "setup",
            "POST",
            "/api/v1/webhooks",
            json={
                "url": f"{receiver_url}/hook{n}",
                "events": [EVENT_TYPE],
                "integration_id": integration_id,
            },
        )
        assert res.status_code == 201, res.text
        webhooks.append(res.json()["id"])
    return integration_id, webhooks


def _key_id(api: Client, key: str) -> str:
    res = api.call("setup", "GET", "/api/v1/auth/whoami", key=key)
    assert res.status_code == 200, res.text
    return str(res.json()["id"])


def _publish_until(api: Client, stop: threading.Event, published: list[str]) -> None:
    n = 0
    while not stop.is_set():
        res = api.call(
            "publish", "POST", "/api/v1/events", json={"type": EVENT_TYPE, "data": {"n": n}}
        )
        if res.status_code in (200, 201, 202):
            published.append(res.json()["id"])
        n += 1
        time.sleep(0.1)  # ~5-10 events a second, each fanned out to five webhooks


def test_concurrent_writes_while_publishing(app, admin_user, base_url, worker, receiver):
    api = Client(base_url, make_key(app, admin_user, ["admin"], rate_limit=1_000_000))
    integration_id, webhooks = _setup(api, receiver.url)
    to_rotate = [make_key(app, admin_user, ["logs:read"], rate_limit=100_000) for _ in range(EACH)]
    to_revoke = [make_key(app, admin_user, ["logs:read"], rate_limit=100_000) for _ in range(EACH)]
    rotate_ids = [_key_id(api, key) for key in to_rotate]
    revoke_ids = []
    for key in to_revoke:  # verified and cached by both gunicorn workers (most likely)
        revoke_ids.append(_key_id(api, key))
        for _ in range(3):
            _key_id(api, key)

    operations: list[Callable[[], Any]] = []
    for n in range(EACH):
        operations += [
            lambda n=n: api.call(
                "rotate", "POST", f"/api/v1/api-keys/{rotate_ids[n]}/rotate", json={}
            ),
            lambda n=n: api.call("revoke", "DELETE", f"/api/v1/api-keys/{revoke_ids[n]}"),
            lambda n=n: api.call(
                "patch webhook",
                "PATCH",
                f"/api/v1/webhooks/{webhooks[n % 5]}",
                json={"description": f"edit {n}"},
            ),
            lambda n=n: api.call(
                "patch integration",
                "PATCH",
                f"/api/v1/integrations/{integration_id}",
                json={"description": f"edit {n}"},
            ),
            lambda n=n: api.call(
                "rotate-secret", "POST", f"/api/v1/webhooks/{webhooks[n % 5]}/rotate-secret"
            ),
        ]
    stop, published = threading.Event(), []
    publisher = threading.Thread(target=_publish_until, args=(api, stop, published))
    publisher.start()
    try:
        time.sleep(1)  # deliveries are flowing before the writes start
        with ThreadPoolExecutor(max_workers=len(operations)) as pool:
            answers = [future.result() for future in [pool.submit(op) for op in operations]]
        time.sleep(1)
    finally:
        stop.set()
        publisher.join()

    by_kind = Counter(kind for kind, _ in api.statuses if kind not in ("setup", "publish"))
    errors = api.server_errors()
    print(
        f"\n5xx: {len(errors)} ({Counter(errors)}) of {sum(by_kind.values())} writes and "
        f"{len(published)} events published"
    )
    assert errors == []
    assert all(res.status_code in (200, 204) for res in answers), [
        (res.request.method, res.request.url, res.status_code, res.text)
        for res in answers
        if res.status_code not in (200, 204)
    ]
    for key in to_revoke:  # refused by every worker (each asked several times)
        for _ in range(4):
            res = api.call("after", "GET", "/api/v1/auth/whoami", key=key)
            assert res.status_code == 401, res.text
    # the worker delivered every published event to every webhook meanwhile
    receiver.wait_for(
        lambda got: (
            {r.headers["webhook-id"] for r in got} >= set(published)
            and len(got) >= 5 * len(published)
        ),
        timeout=180,
    )


def test_revocation_redis_cannot_record_is_refused_not_half_done(app, admin_user, api):
    """Cached snapshots of a key die when the auth epoch moves in Redis: when Redis cannot take
    the move, the revocation fails with a 503 and nothing changes (the key is not revoked in
    the database while other processes' caches keep it working)."""
    from app import create_app
    from tests.redis_server import free_port

    victim = make_key(app, admin_user, ["logs:read"])
    key_id = api.get("/api/v1/auth/whoami", headers={"Authorization": f"Bearer {victim}"}).json[
        "id"
    ]
    cut_off = create_app(
        {
            **app.config,
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "RATELIMIT_FAIL_OPEN": True,
        }
    )
    res = cut_off.test_client().delete(
        f"/api/v1/api-keys/{key_id}", headers={"Authorization": f"Bearer {api.key}"}
    )
    assert res.status_code == 503, res.json
    assert res.content_type == "application/problem+json"
    assert api.get(f"/api/v1/api-keys/{key_id}").json["revoked_at"] is None

    assert api.delete(f"/api/v1/api-keys/{key_id}").status_code == 204
    res = api.get("/api/v1/auth/whoami", headers={"Authorization": f"Bearer {victim}"})
    assert res.status_code == 401


def test_a_write_that_cannot_get_the_sqlite_lock_answers_503_and_changes_nothing(
    app, admin_user, api
):
    if not app.config["DATABASE_URL"].startswith("sqlite:///"):
        pytest.skip("SQLite's write lock")
    import sqlite3

    from app import create_app
    from app.store.db import database, open_database

    victim = make_key(app, admin_user, ["logs:read"])
    key_id = api.get("/api/v1/auth/whoami", headers={"Authorization": f"Bearer {victim}"}).json[
        "id"
    ]
    impatient = create_app({**app.config, "DATABASE_BUSY_TIMEOUT": 100})
    holder = sqlite3.connect(app.config["DATABASE_URL"][len("sqlite:///") :], isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's long write
    try:
        res = impatient.test_client().delete(
            f"/api/v1/api-keys/{key_id}", headers={"Authorization": f"Bearer {api.key}"}
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        database.initialize(open_database(app.config["DATABASE_URL"]))  # the session app's
    assert res.status_code == 503, res.json
    assert res.content_type == "application/problem+json"
    assert res.headers["Retry-After"] == "1"
    assert api.get(f"/api/v1/api-keys/{key_id}").json["revoked_at"] is None
    res = api.get("/api/v1/auth/whoami", headers={"Authorization": f"Bearer {victim}"})
    assert res.status_code == 200
