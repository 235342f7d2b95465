"""Issue 24, second security pass: streams (rotation, per-key caps, slow readers) and the
unauthenticated inbound endpoint (throttled, aggregated rejections), through real processes."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import requests

from app.store.models import User
from app.stream.publish import STREAM_KEY
from tests.conftest import (
    ApiClient,
    create_github_integration,
    make_key,
    make_user,
    session_redis_url,
)
from tests.peers import GunicornServer
from tests.sse import SSEClient


@pytest.fixture(scope="module")
def stream_base(app: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The stream service as deployed: gunicorn with a gevent worker."""
    log = tmp_path_factory.mktemp("stream") / "gunicorn.log"
    server = GunicornServer(
        app,
        log,
        SWITCHBOARD_STREAM_HEARTBEAT="0.3",
        SWITCHBOARD_STREAM_MAX_PER_KEY="3",
        SWITCHBOARD_STREAM_MAX_PER_USER="4",
        SWITCHBOARD_STREAM_CLIENT_BUFFER_BYTES="65536",
    )
    server.command[1:1] = ["-k", "gevent", "--worker-connections", "200"]
    yield server.start()
    server.stop()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _key_id(api: ApiClient, name: str) -> str:
    return str(
        next(k["id"] for k in api.get("/api/v1/api-keys").json["items"] if k["name"] == name)
    )


def _wait_until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _closed(client: SSEClient, timeout: float = 15) -> str:
    got = client.collect(lambda got: any(m.event == "stream.closed" for m in got), timeout)
    assert client.closed.wait(10)
    return str(got[-1].json()["reason"])


def test_rotating_without_grace_closes_streams_opened_with_the_old_secret(
    stream_base: str, api: ApiClient, app: Any, admin_user: User
) -> None:
    old = make_key(app, admin_user, ["logs:read"], name="rotated")
    url = f"{stream_base}/api/v1/stream"
    by_header = SSEClient(url, _auth(old))
    token = requests.post(f"{url}/tokens", headers=_auth(old), timeout=10).json()
    by_token = SSEClient(token["url"])
    unused = requests.post(f"{url}/tokens", headers=_auth(old), timeout=10).json()
    assert by_header.status == 200 and by_token.status == 200

    res = api.post(
        f"/api/v1/api-keys/{_key_id(api, 'rotated')}/rotate", json={"grace_period_seconds": 0}
    )
    assert res.status_code == 200
    assert api.get("/api/v1/logs", headers=_auth(old)).status_code == 401
    assert "rotated" in _closed(by_header)
    assert "rotated" in _closed(by_token)
    assert requests.get(unused["url"], timeout=10).status_code == 401  # traded for the old one

    fresh = SSEClient(url, _auth(res.json["key"]))  # the new secret streams on
    assert fresh.status == 200
    _wait_until(lambda: len(fresh.comments) >= 8)  # heartbeats, well past the re-check
    assert fresh.messages.empty() and not fresh.closed.is_set()
    fresh.close()


def test_a_stream_on_the_old_secret_closes_when_its_grace_period_ends(
    stream_base: str, api: ApiClient, app: Any, admin_user: User
) -> None:
    old = make_key(app, admin_user, ["logs:read"], name="graceful")
    client = SSEClient(f"{stream_base}/api/v1/stream", _auth(old))
    res = api.post(
        f"/api/v1/api-keys/{_key_id(api, 'graceful')}/rotate", json={"grace_period_seconds": 2}
    )
    assert res.status_code == 200
    assert "grace period is over" in _closed(client, timeout=20)


def test_one_key_and_one_user_hold_a_bounded_number_of_streams(
    stream_base: str, app: Any, admin_user: User
) -> None:
    url = f"{stream_base}/api/v1/stream"
    first, second = (make_key(app, admin_user, ["logs:read"], name=n) for n in ("a", "b"))
    someone_else = make_key(app, make_user(app, "m@example.com"), ["logs:read"])
    held = [SSEClient(url, _auth(first)) for _ in range(3)]
    assert [c.status for c in held] == [200] * 3
    refused = requests.get(url, headers=_auth(first), timeout=10)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "5"
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert "key already holds its maximum of 3" in refused.json()["detail"]
    token = requests.post(f"{url}/tokens", headers=_auth(first), timeout=10).json()
    assert requests.get(token["url"], timeout=10).status_code == 429  # tokens count the same

    held.append(SSEClient(url, _auth(second)))  # the user's fourth stream, on another key
    assert held[-1].status == 200
    refused = requests.get(url, headers=_auth(second), timeout=10)
    assert refused.status_code == 429 and "user already holds" in refused.json()["detail"]
    other = SSEClient(url, _auth(someone_else))  # other users are not held back
    assert other.status == 200

    held.pop(0).close()  # a slot comes back when its stream closes
    reopened: list[SSEClient] = []

    def reopen() -> bool:
        attempt = SSEClient(url, _auth(first))
        if attempt.status == 200:
            reopened.append(attempt)
        return attempt.status == 200

    _wait_until(reopen)
    for client in held + reopened + [other]:
        client.close()


def _metric(base: str, sample: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=10).text
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(sample)]
    return sum(values)


def test_a_client_that_stops_reading_is_dropped_with_a_gap_notice(
    stream_base: str, api: ApiClient, admin_key: str
) -> None:
    assert api.post("/api/v1/event-types", json={"name": "big.thing"}).status_code == 201
    dropped = 'switchboard_stream_connections_total{phase="dropped",reason="slow"}'
    before = _metric(stream_base, dropped)
    host, port = stream_base.split("//")[1].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing, holds little
    sock.connect((host, int(port)))
    sock.sendall(
        f"GET /api/v1/stream?types=event.published HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {admin_key}\r\n\r\n".encode()
    )
    deadline = time.monotonic() + 60
    published = 0
    while _metric(stream_base, dropped) <= before:  # 200 KB events until the server gives up
        assert time.monotonic() < deadline and published < 400, "never dropped"
        for _ in range(5):
            res = api.post(
                "/api/v1/events", json={"type": "big.thing", "data": {"x": "y" * 200_000}}
            )
            assert res.status_code == 202
            published += 1
    sock.settimeout(10)
    received = b""
    while chunk := sock.recv(1 << 20):
        received += chunk
    sock.close()
    messages = received.split(b"\r\n\r\n", 1)[1].decode(errors="replace")
    ids = re.findall(r"^id: (\S+)$", messages, re.MULTILINE)
    assert ids and len(ids) < published
    notice = messages.rsplit("event: stream.gap\ndata: ", 1)[1]
    assert json.loads(re.split(r"\r?\n", notice)[0]) == {
        "last_event_id": ids[-1],  # resume from here with Last-Event-ID: nothing is lost
        "reason": "slow_client",
    }


def _github_post(client: Any, integration_id: str, secret: str, address: str) -> Any:
    body = json.dumps({"action": "completed", "n": uuid.uuid4().hex}).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return client.post(
        f"/api/v1/inbound/{integration_id}",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "ping",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": signature,
        },
        environ_base={"REMOTE_ADDR": address},
    )


def test_rejected_inbound_requests_are_throttled_and_logged_once_per_interval(
    app: Any,
    api: ApiClient,
    client: Any,
    worker: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(app.config, "INBOUND_REJECTIONS_PER_MINUTE", 5)
    monkeypatch.setitem(app.config, "INBOUND_REJECTION_LOG_INTERVAL", 3)
    secret = "s" * 24
    integration = create_github_integration(api, secret)
    iid = integration["id"]
    stream = redis.Redis.from_url(session_redis_url())
    entries_before = stream.xlen(STREAM_KEY)

    answers = [_github_post(client, iid, "wrong" * 5, "10.0.0.1") for _ in range(12)]
    assert [a.status_code for a in answers] == [401] * 5 + [429] * 7
    assert 0 < int(answers[-1].headers["Retry-After"]) <= 60
    assert answers[-1].mimetype == "application/problem+json"
    # A valid delivery is never throttled: not from that address, nor from another.
    assert _github_post(client, iid, secret, "10.0.0.1").status_code == 200
    assert _github_post(client, iid, secret, "10.0.0.2").status_code == 200
    assert _github_post(client, iid, "wrong" * 5, "10.0.0.2").status_code == 401  # not 429

    def rows(event_type: str) -> list[dict[str, Any]]:
        query = {"event_type": event_type, "limit": 100}
        return list(api.get(f"/api/v1/integrations/{iid}/logs", query_string=query).json["items"])

    assert rows("inbound.request") and all(
        r["status"] == "success" for r in rows("inbound.request")
    )
    _wait_until(lambda: sum(r["event_data"]["count"] for r in rows("inbound.rejected")) == 13)
    summaries = rows("inbound.rejected")
    assert len(summaries) <= 3  # one per 3-second interval, not one per request
    assert {reason for r in summaries for reason in r["event_data"]["reasons"]} == {"rejected"}
    assert all(r["status"] == "error" and "rejected" in r["error_message"] for r in summaries)
    published = stream.xlen(STREAM_KEY) - entries_before  # events, logs: a few, not 13 more
    assert published < 13
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'switchboard_inbound_rejections_total{reason="rejected"}' in metrics


def test_stream_slots_are_counted_per_key_and_user_and_expire_with_their_lease() -> None:
    from app.stream import slots
    from app.web.problems import Problem

    client = redis.Redis.from_url(session_redis_url())
    held = [slots.claim(client, "key_a", "usr_1", per_key=2, per_user=3) for _ in range(2)]
    with pytest.raises(Problem) as refused:
        slots.claim(client, "key_a", "usr_1", per_key=2, per_user=3)
    assert refused.value.code == 429
    held.append(slots.claim(client, "key_b", "usr_1", per_key=2, per_user=3))
    with pytest.raises(Problem):  # the user's third stream fills the user's cap
        slots.claim(client, "key_c", "usr_1", per_key=2, per_user=3)
    assert slots.claim(client, "key_c", None, per_key=2, per_user=3)  # no owner: key cap only
    slots.release(client, held.pop(0))
    held.append(slots.claim(client, "key_a", "usr_1", per_key=2, per_user=3))
    slots.renew(client, held)
    # A process that died without giving its slots back: they lapse with the lease.
    for name in ("sb:stream:slots:key:key_a", "sb:stream:slots:user:usr_1"):
        client.zadd(name, {member: 1 for member in client.zrange(name, 0, -1)})
    assert slots.claim(client, "key_a", "usr_1", per_key=2, per_user=3)
