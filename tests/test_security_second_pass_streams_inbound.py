"""Issue 24, second security pass: streams (rotation, per-key caps, slow readers) and the
unauthenticated inbound endpoint (throttled, aggregated rejections), through real processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from app.store.models import User
from tests.conftest import ApiClient, make_key
from tests.peers import GunicornServer
from tests.sse import SSEClient


@pytest.fixture(scope="module")
def stream_base(app: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The stream service as deployed: gunicorn with a gevent worker."""
    log = tmp_path_factory.mktemp("stream") / "gunicorn.log"
    server = GunicornServer(app, log, SWITCHBOARD_STREAM_HEARTBEAT="0.3")
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
