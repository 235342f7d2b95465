"""Per-key rate limiting and usage analytics through the HTTP API, in-process and under gunicorn."""

from __future__ import annotations

import logging
import multiprocessing
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from app import create_app
from tests.conftest import ApiClient, make_key, make_user, session_redis_url
from tests.peers import GunicornServer

WHOAMI = "/api/v1/auth/whoami"
KEYS = "/api/v1/api-keys"
ROOT = Path(__file__).resolve().parent.parent
_RATELIMIT_RE = re.compile(r'^"(?P<name>[^"]+)";r=(?P<r>\d+);t=(?P<t>\d+)$')


def _ratelimit(res: Any) -> tuple[str, int, int]:
    """Parse the ``RateLimit`` header into (policy name, remaining, reset seconds)."""
    match = _RATELIMIT_RE.match(res.headers["RateLimit"])
    assert match, res.headers["RateLimit"]
    return match["name"], int(match["r"]), int(match["t"])


def _assert_problem(res: Any, status: int, slug: str) -> dict[str, Any]:
    assert res.status_code == status, res.get_data(as_text=True)
    assert res.content_type == "application/problem+json"
    body: dict[str, Any] = res.json
    assert body["status"] == status and body["type"].endswith("/" + slug)
    return body


# --- headers, 429, short windows ------------------------------------------------------------


def test_headers_count_down_then_429_problem(app, client, admin_user):
    kc = ApiClient(client, make_key(app, admin_user, ["admin"], rate_limit=50))
    for expected in range(49, -1, -1):
        res = kc.get(WHOAMI)
        assert res.status_code == 200
        assert res.headers["RateLimit-Policy"] == '"hour";q=50;w=3600'
        name, remaining, reset = _ratelimit(res)
        assert (name, remaining) == ("hour", expected)
        assert 3590 <= reset <= 3600 + 60  # one window, plus at most one 1-minute slice
        assert "Retry-After" not in res.headers

    denied = kc.get(WHOAMI)
    body = _assert_problem(denied, 429, "quota-exceeded")
    assert "50 requests" in body["detail"]
    retry_after = int(denied.headers["Retry-After"])
    assert 1 <= retry_after <= 3600 + 60
    assert denied.headers["RateLimit-Policy"] == '"hour";q=50;w=3600'
    assert _ratelimit(denied) == ("hour", 0, retry_after)
    # Denied requests consume nothing: still denied, the wait does not grow.
    again = kc.get(WHOAMI)
    assert again.status_code == 429 and int(again.headers["Retry-After"]) <= retry_after


def test_error_responses_after_auth_carry_headers_before_auth_do_not(app, client):
    member = make_user(app, "m@example.com")
    kc = ApiClient(client, make_key(app, member, ["integrations:read"], rate_limit=10))
    not_found = kc.get("/api/v1/integrations/int_nope")
    forbidden = kc.get(KEYS)  # lacks keys:read: 403, still counted
    invalid = kc.get("/api/v1/integrations?limit=0")
    assert [r.status_code for r in (not_found, forbidden, invalid)] == [404, 403, 422]
    assert [_ratelimit(r)[1] for r in (not_found, forbidden, invalid)] == [9, 8, 7]
    for res in (not_found, forbidden, invalid):
        assert res.headers["RateLimit-Policy"] == '"hour";q=10;w=3600'
        assert res.content_type == "application/problem+json"

    unauthenticated = client.get(WHOAMI)
    assert unauthenticated.status_code == 401 and "RateLimit" not in unauthenticated.headers
    assert "RateLimit" not in client.get("/api/v1/health").headers


def test_short_window_admits_again_after_retry_after(app, admin_user):
    short = create_app({**app.config, "RATELIMIT_WINDOW": 2})
    kc = ApiClient(short.test_client(), make_key(app, admin_user, ["admin"], rate_limit=2))
    assert [kc.get(WHOAMI).status_code for _ in range(2)] == [200, 200]
    denied = kc.get(WHOAMI)
    _assert_problem(denied, 429, "quota-exceeded")
    assert denied.headers["RateLimit-Policy"] == '"2s";q=2;w=2'
    retry_after = int(denied.headers["Retry-After"])
    assert 1 <= retry_after <= 3  # 2 s plus at most one slice, rounded up
    time.sleep(retry_after)
    res = kc.get(WHOAMI)
    # Admitted; the second request's slice may still count (it leaves a few ms after the first).
    assert res.status_code == 200 and _ratelimit(res)[0] == "2s" and _ratelimit(res)[1] in (0, 1)


def test_rate_limiting_can_be_disabled(app, admin_user):
    off = create_app({**app.config, "RATELIMIT_ENABLED": False})
    kc = ApiClient(off.test_client(), make_key(app, admin_user, ["admin"], rate_limit=1))
    responses = [kc.get(WHOAMI) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert all("RateLimit" not in r.headers for r in responses)


def test_with_rate_limiting_off_a_key_is_still_cached_and_still_revocable(
    app, admin_user, monkeypatch
):
    """Off, the limiter no longer reads the auth epoch: one GET does, so the verified key is
    reused without a query per request, and a revocation elsewhere still cuts it off."""
    import app.auth.access as access

    off = create_app({**app.config, "RATELIMIT_ENABLED": False})
    key = make_key(app, admin_user, ["admin"])
    client = ApiClient(off.test_client(), key)
    lookups = []
    real = access.find_key_row
    monkeypatch.setattr(
        access, "find_key_row", lambda prefix: lookups.append(prefix) or real(prefix)
    )
    assert [client.get(WHOAMI).status_code for _ in range(5)] == [200] * 5
    assert len(lookups) == 1
    key_id = client.get(WHOAMI).json["id"]
    revoked = ApiClient(app.test_client(), key).delete(f"/api/v1/api-keys/{key_id}")
    assert revoked.status_code == 204  # by another app: only the auth epoch tells this one
    before = len(lookups)
    assert client.get(WHOAMI).status_code == 401
    assert len(lookups) == before + 1  # the moved epoch made it look the key up again


def test_with_leases_a_revocation_is_immediate_here_and_bounded_elsewhere(app, admin_user):
    """Leases are on by default (0.1 s): the revoking process refuses the key at once, another
    process within its lease: nothing it admits is asked for after the lease could end."""
    lease = app.config["RATELIMIT_LEASE_SECONDS"]
    assert lease == 0.1
    key = make_key(app, admin_user, ["admin"], rate_limit=1_000_000)
    here = ApiClient(create_app(app.config).test_client(), key)
    there = ApiClient(create_app(app.config).test_client(), key)  # another process, in effect
    for _ in range(10):  # both lease requests ahead now
        assert here.get(WHOAMI).status_code == there.get(WHOAMI).status_code == 200
    key_id = here.get(WHOAMI).json["id"]
    assert here.delete(f"/api/v1/api-keys/{key_id}").status_code == 204
    revoked_at = time.monotonic()
    assert here.get(WHOAMI).status_code == 401  # the process that revoked drops its leases
    deadline = revoked_at + 10
    while True:  # the other one learns of it once its lease has ended
        asked = time.monotonic()
        status = there.get(WHOAMI).status_code
        if status == 401:
            break
        assert status == 200 and asked < revoked_at + lease, "admitted past the lease"
        assert time.monotonic() < deadline


# --- Redis down -----------------------------------------------------------------------------


def _dead_redis_app(app: Any, **config: Any) -> Any:
    return create_app({**app.config, "REDIS_URL": "redis://127.0.0.1:1/0", **config})


def test_redis_down_fails_closed_with_503(app, admin_user, caplog):
    dead = _dead_redis_app(app)
    client = dead.test_client()
    kc = ApiClient(client, make_key(app, admin_user, ["admin"]))
    with caplog.at_level(logging.WARNING, logger="app.limits.enforce"):
        res = kc.get(WHOAMI)
    body = _assert_problem(res, 503, "service-unavailable")
    assert "rate limiter is unavailable" in body["detail"]
    assert "RateLimit" not in res.headers
    assert kc.get("/api/v1/integrations").status_code == 503
    assert kc.post(KEYS, json={"name": "x"}).status_code == 503  # nothing written
    assert client.get("/api/v1/health").status_code == 200
    assert any("fail closed" in r.getMessage() for r in caplog.records)
    assert kc.key not in caplog.text


def test_redis_down_fail_open_lets_requests_through(app, admin_user, caplog):
    dead = _dead_redis_app(app, RATELIMIT_FAIL_OPEN=True)
    kc = ApiClient(dead.test_client(), make_key(app, admin_user, ["admin"]))
    with caplog.at_level(logging.WARNING, logger="app.limits.enforce"):
        res = kc.get(WHOAMI)
    assert res.status_code == 200 and "RateLimit" not in res.headers
    assert any("fail open" in r.getMessage() for r in caplog.records)
    key_id = res.json["id"]
    # Usage analytics need Redis too: a clean 503, never a 500.
    _assert_problem(kc.get(f"{KEYS}/{key_id}/usage"), 503, "service-unavailable")


# --- usage analytics ------------------------------------------------------------------------


def test_usage_counts_statuses_and_rate_limited(app, client, admin_user, api):
    member = make_user(app, "m@example.com")
    kc = ApiClient(client, make_key(app, member, ["keys:read"], rate_limit=5))
    key_id = kc.get(WHOAMI).json["id"]
    assert kc.get(WHOAMI).status_code == 200
    assert kc.get(f"{KEYS}/{key_id}").status_code == 200
    assert kc.get(f"{KEYS}/key_nope").status_code == 404
    assert kc.get(WHOAMI).status_code == 200
    assert kc.get(WHOAMI).status_code == 429

    res = api.get(f"{KEYS}/{key_id}/usage")
    assert res.status_code == 200, res.json
    body = res.json
    assert body["key_id"] == key_id and body["window"] == "24h"
    assert len(body["buckets"]) == 24
    expected = {
        "requests": 6,
        "2xx": 4,
        "3xx": 0,
        "4xx": 2,
        "5xx": 0,
        "rate_limited": 1,
        "gateway_bytes": 0,
    }
    assert body["totals"] == expected
    for name, total in expected.items():  # the buckets add up (even across an hour boundary)
        assert sum(bucket[name] for bucket in body["buckets"]) == total
    hours = [bucket["hour"] for bucket in body["buckets"]]
    assert hours == sorted(hours) and hours[-1].endswith(":00:00Z")

    week = api.get(f"{KEYS}/{key_id}/usage?window=7d").json
    assert len(week["buckets"]) == 168 and week["totals"] == expected

    bad = api.get(f"{KEYS}/{key_id}/usage?window=1y")
    assert "window" in _assert_problem(bad, 422, "validation-error")["errors"]


def test_usage_follows_key_visibility(app, client):
    alice, bob = make_user(app, "alice@example.com"), make_user(app, "bob@example.com")
    alice_key = ApiClient(client, make_key(app, alice, ["keys:read"]))
    alice_other = ApiClient(client, make_key(app, alice, ["keys:read"]))
    bob_key = ApiClient(client, make_key(app, bob, ["keys:read"]))
    no_scope = ApiClient(client, make_key(app, alice, ["integrations:read"]))
    key_id = alice_key.get(WHOAMI).json["id"]

    assert alice_other.get(f"{KEYS}/{key_id}/usage").json["totals"]["requests"] == 1
    _assert_problem(bob_key.get(f"{KEYS}/{key_id}/usage"), 404, "not-found")
    _assert_problem(no_scope.get(f"{KEYS}/{key_id}/usage"), 403, "forbidden")


# --- exact across real processes ------------------------------------------------------------


def _fire(url: str, key: str, requests_per_process: int, barrier: Any, results: Any) -> None:
    """Client process: wait for the others, then send requests from 5 threads at once."""
    session = requests.Session()
    headers = {"Authorization": f"Bearer {key}"}

    def one(_: int) -> int:
        return session.get(url, headers=headers, timeout=30).status_code

    barrier.wait(timeout=60)
    with ThreadPoolExecutor(5) as pool:
        results.put(list(pool.map(one, range(requests_per_process))))


@pytest.fixture()
def gunicorn_url(app: Any, tmp_path: Path) -> Iterator[str]:
    """The app under ``gunicorn -w 2`` on the test database and Redis."""
    server = GunicornServer(
        app, tmp_path / "gunicorn.log", workers=2, SWITCHBOARD_INSTANCE_PATH=str(tmp_path / "i")
    )
    try:
        yield server.start()
    finally:
        server.stop()


def test_exact_limit_across_gunicorn_workers_and_client_processes(
    app, admin_user, gunicorn_url, tmp_path
):
    key = make_key(app, admin_user, ["admin"], rate_limit=50)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    clients = [
        ctx.Process(target=_fire, args=(gunicorn_url + WHOAMI, key, 20, barrier, results))
        for _ in range(4)
    ]
    for process in clients:
        process.start()
    try:
        codes = [code for _ in clients for code in results.get(timeout=60)]
    finally:
        for process in clients:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
    assert Counter(codes) == {200: 50, 429: 30}
    # The limiter's state counts exactly the admitted requests.
    with redis.Redis.from_url(session_redis_url()) as r:
        entries = r.keys("sb:rl:*")
        assert len(entries) == 1
        assert sum(int(n) for n in r.hvals(entries[0])) == 50
    assert "Traceback" not in (tmp_path / "gunicorn.log").read_text()
