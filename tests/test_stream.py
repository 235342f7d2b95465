"""The live stream: real gevent gunicorn, real worker, real receiver, real Redis Streams."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

from app.store.models import DEFAULT_TENANT_ID, User
from app.stream.hub import BufferLimit, Hub
from app.stream.publish import ORIGIN_KEY, STREAM_KEY, TRIMMED_KEY, Entry, Publisher
from tests.conftest import ApiClient, make_key, session_redis_url
from tests.peers import GunicornServer
from tests.sse import Message, SSEClient


@pytest.fixture(scope="module")
def stream_base(app: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The stream service as deployed: gunicorn with a gevent worker."""
    log = tmp_path_factory.mktemp("stream") / "gunicorn.log"
    server = GunicornServer(app, log, SWITCHBOARD_STREAM_HEARTBEAT="0.5")
    server.command[1:1] = ["-k", "gevent", "--worker-connections", "200"]
    yield server.start()
    server.stop()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _publish_orders(api: ApiClient, numbers: range) -> list[str]:
    ids = []
    for n in numbers:
        res = api.post("/api/v1/events", json={"type": "order.paid", "data": {"n": n}})
        assert res.status_code == 202, res.json
        ids.append(res.json["id"])
    return ids


def _order_webhook(api: ApiClient, integration: dict[str, Any], url: str) -> str:
    assert api.post("/api/v1/event-types", json={"name": "order.paid"}).status_code == 201
    res = api.post(
        "/api/v1/webhooks",
        json={"url": url, "events": ["order.paid"], "integration_id": integration["id"]},
    )
    assert res.status_code == 201, res.json
    return str(res.json["id"])


def _succeeded(messages: list[Message]) -> list[str]:
    return [
        m.json()["event_id"]
        for m in messages
        if m.event == "delivery.attempted" and m.json()["status"] == "succeeded"
    ]


def test_delivery_outcomes_arrive_and_resume_without_gaps_or_duplicates(
    stream_base: str,
    api: ApiClient,
    admin_key: str,
    integration: dict[str, Any],
    receiver: Any,
    worker: Any,
) -> None:
    webhook_id = _order_webhook(api, integration, receiver.url + "/hooks")
    url = f"{stream_base}/api/v1/stream"
    first = SSEClient(url, _auth(admin_key), types="delivery.attempted", webhook_id=webhook_id)
    assert first.status == 200 and first.response.headers["Content-Type"].startswith(
        "text/event-stream"
    )
    published = _publish_orders(api, range(5))
    seen = first.collect(lambda got: len(_succeeded(got)) == 5)
    first.close()
    assert sorted(_succeeded(seen)) == sorted(published)
    resume_from = seen[2]  # as if the connection broke after the third message

    published += _publish_orders(api, range(5, 10))  # while nobody listens
    receiver.wait_for(lambda reqs: len(reqs) == 10)
    second = SSEClient(
        url,
        {**_auth(admin_key), "Last-Event-ID": str(resume_from.id)},
        types="delivery.attempted",
        webhook_id=webhook_id,
    )
    published += _publish_orders(api, range(10, 12))  # live again, right after the catch-up
    resumed = second.collect(lambda got: len(_succeeded(got)) == 9)
    second.close()
    combined = _succeeded(seen[:3]) + _succeeded(resumed)
    assert combined == [e for e in combined if e in published]
    assert sorted(combined) == sorted(published)  # every delivery once: no gap, no duplicate
    ids = [m.id for m in seen[:3] + resumed]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, str(i).split("-"))))
    assert len(set(ids)) == len(ids)


def test_a_key_sees_only_what_its_scopes_allow(
    stream_base: str,
    api: ApiClient,
    admin_user: User,
    app: Any,
    integration: dict[str, Any],
    receiver: Any,
    worker: Any,
) -> None:
    keys = {
        scope: make_key(app, admin_user, [scope])
        for scope in ("logs:read", "webhooks:read", "integrations:read", "events:write")
    }
    url = f"{stream_base}/api/v1/stream"
    clients = {scope: SSEClient(url, _auth(key)) for scope, key in keys.items()}
    # First what none of them may see: a key's events need keys:read.
    assert api.post("/api/v1/api-keys", json={"name": "x", "permissions": []}).status_code == 201
    _order_webhook(api, integration, receiver.url + "/hooks")
    _publish_orders(api, range(1))
    res = api.patch(f"/api/v1/integrations/{integration['id']}", json={"status": "inactive"})
    assert res.status_code == 200

    def has(kind: str) -> Any:
        return lambda got: any(m.event == kind for m in got)

    logs = clients["logs:read"].collect(has("log.created"))
    hooks = clients["webhooks:read"].collect(lambda got: len(_succeeded(got)) == 1)
    ints = clients["integrations:read"].collect(has("integration.status_changed"))
    time.sleep(1)  # anything else in flight arrives now (the stream is one ordered log)
    for client in clients.values():
        client.close()
    logs += _drain(clients["logs:read"])
    hooks += _drain(clients["webhooks:read"])
    ints += _drain(clients["integrations:read"])
    writer = _drain(clients["events:write"])

    assert {m.event for m in logs} == {"log.created"}
    assert {m.event for m in hooks} <= {"delivery.attempted", "event.published"}
    assert {m.json()["type"] for m in hooks if m.event == "event.published"} <= {
        "order.paid",
        "webhook.created",
    }
    assert {m.event for m in ints} <= {"integration.status_changed", "event.published"}
    assert {m.json()["type"] for m in ints if m.event == "event.published"} == {
        "integration.updated"
    }
    assert writer == []  # events:write reads nothing
    everything = logs + hooks + ints
    assert not any("api_key" in m.data for m in everything)


def _drain(client: SSEClient) -> list[Message]:
    got = []
    while not client.messages.empty():
        message = client.messages.get()
        if message is not None:
            got.append(message)
    return got


def test_stream_tokens_are_single_use(stream_base: str, admin_key: str) -> None:
    res = requests.post(f"{stream_base}/api/v1/stream/tokens", headers=_auth(admin_key), timeout=10)
    assert res.status_code == 201
    body = res.json()
    assert body["url"].startswith(f"{stream_base}/api/v1/stream?token=sbst_")
    assert body["expires_in"] == 60
    first = SSEClient(body["url"])
    assert first.status == 200
    first.collect(lambda got: True)  # connected
    again = requests.get(body["url"], timeout=10)
    assert again.status_code == 401
    assert again.headers["Content-Type"] == "application/problem+json"
    assert "used or expired" in again.json()["detail"]
    assert requests.get(f"{stream_base}/api/v1/stream?token=nope", timeout=10).status_code == 401
    first.close()


def test_a_revoked_key_is_cut_off(
    stream_base: str, api: ApiClient, app: Any, admin_user: User
) -> None:
    key = make_key(app, admin_user, ["logs:read"], name="short-lived")
    client = SSEClient(f"{stream_base}/api/v1/stream", _auth(key))
    assert client.status == 200
    key_id = next(
        k["id"] for k in api.get("/api/v1/api-keys").json["items"] if k["name"] == "short-lived"
    )
    assert api.delete(f"/api/v1/api-keys/{key_id}").status_code == 204
    closed = client.collect(lambda got: any(m.event == "stream.closed" for m in got), timeout=15)
    assert "revoked" in closed[-1].json()["reason"]
    assert client.closed.wait(10)


def test_resuming_past_retention_reports_the_gap(stream_base: str, admin_key: str) -> None:
    client = redis.Redis.from_url(session_redis_url())
    publisher = Publisher(client, retention=3600, max_entries=100)
    for n in range(150):
        publisher._queue.append(Entry(DEFAULT_TENANT_ID, "test.entry", "logs:read", {"n": n}))
    publisher.flush()
    ids = [i.decode() for i, _ in client.xrange(STREAM_KEY)]
    assert len(ids) == 100
    trimmed = client.get(TRIMMED_KEY).decode()
    url = f"{stream_base}/api/v1/stream"

    stale = SSEClient(url, {**_auth(admin_key), "Last-Event-ID": "1-0"}, types="test.*")
    got = stale.collect(lambda got: len(got) == 101)
    stale.close()
    assert got[0].event == "stream.gap"
    origin = client.get(ORIGIN_KEY).decode()  # "1-0" is older than the stream itself, too
    assert got[0].json() == {
        "last_event_id": "1-0",
        "trimmed_through": trimmed,
        "stream_started": origin,
    }
    assert [m.json()["n"] for m in got[1:]] == list(range(50, 150))

    recent = SSEClient(url, _auth(admin_key), types="test.*", last_event_id=ids[89])
    got = recent.collect(lambda got: len(got) == 10)
    time.sleep(0.5)
    recent.close()
    assert [m.json()["n"] for m in got + _drain(recent)] == list(range(140, 150))


def test_resuming_after_redis_came_back_empty_reports_the_gap(
    stream_base: str, admin_key: str
) -> None:
    """Entries lost with Redis (flushed here: the data a restart without persistence leaves)
    are announced as a gap, though nothing was trimmed and the resumed id is recent."""
    client = redis.Redis.from_url(session_redis_url())
    publisher = Publisher(client, retention=3600, max_entries=1000)

    def write(numbers: range) -> None:
        for n in numbers:
            publisher._queue.append(Entry(DEFAULT_TENANT_ID, "test.entry", "logs:read", {"n": n}))
        publisher.flush()

    write(range(5))
    written = [entry_id.decode() for entry_id, _ in client.xrange(STREAM_KEY)]
    seen = written[2]  # the client had read up to n=2
    client.flushdb()  # n=3 and n=4 are lost with it
    # A restart takes far longer than a millisecond, so new ids come after every lost one
    # (within the same millisecond Redis would hand out the lost ids again).
    lost_until_ms = int(written[-1].split("-")[0])
    while (lambda now: now[0] * 1000 + now[1] // 1000)(client.time()) <= lost_until_ms:
        time.sleep(0.001)
    write(range(5, 8))
    url = f"{stream_base}/api/v1/stream"
    resumed = SSEClient(url, {**_auth(admin_key), "Last-Event-ID": seen}, types="test.*")
    got = resumed.collect(lambda got: len(got) == 4)
    resumed.close()
    assert got[0].event == "stream.gap"
    origin = client.get(ORIGIN_KEY).decode()
    assert got[0].json() == {"last_event_id": seen, "stream_started": origin}
    assert [m.json()["n"] for m in got[1:]] == [5, 6, 7]
    # Resuming from an entry written since: nothing is missing, no gap.
    since = client.xrange(STREAM_KEY)[0][0].decode()
    again = SSEClient(url, {**_auth(admin_key), "Last-Event-ID": since}, types="test.*")
    got = again.collect(lambda got: len(got) == 2)
    again.close()
    assert [(m.event, m.json()["n"]) for m in got] == [("test.entry", 6), ("test.entry", 7)]


@pytest.mark.parametrize(
    ("limit", "padding"),
    [(BufferLimit(entries=5, size=1 << 20), 0), (BufferLimit(entries=1000, size=20_000), 4000)],
    ids=["entries", "bytes"],
)
def test_a_client_that_stops_reading_is_dropped_not_buffered(
    limit: BufferLimit, padding: int
) -> None:
    client = redis.Redis.from_url(session_redis_url())
    hub = Hub(client, limit, drop_grace=0.5)
    hub.start()
    ours, theirs = socket.socketpair()
    try:
        slow, _ = hub.subscribe(ours)
        fast, _ = hub.subscribe()
        for n in range(20):
            data = {"n": n, "padding": "x" * padding}
            client.xadd(
                STREAM_KEY, Entry(DEFAULT_TENANT_ID, "test.entry", "logs:read", data).fields()
            )
            taken = fast.take(2)
            assert len(taken) == 1
            assert slow.dropped or slow.size <= limit.size  # never past the bound
        deadline = time.monotonic() + 10
        while not slow.dropped and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow.dropped and len(slow.entries) == 0 and slow.size == 0  # nothing kept for it
        assert not fast.dropped
        theirs.settimeout(10)
        assert theirs.recv(10) == b""  # it never took its notice: its connection was shut down
    finally:
        hub.stop()
        assert hub._thread is not None
        hub._thread.join(5)
        client.close()
        ours.close()
        theirs.close()


def test_stream_answers_problems_before_streaming(
    client: Any, api: ApiClient, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    res = client.get("/api/v1/stream")
    assert res.status_code == 401 and res.mimetype == "application/problem+json"
    res = api.get("/api/v1/stream", headers={"Last-Event-ID": "yesterday"})
    assert res.status_code == 400
    monkeypatch.setitem(app.config, "STREAM_MAX_CLIENTS", 0)
    res = api.get("/api/v1/stream")
    assert res.status_code == 503 and res.headers["Retry-After"] == "5"
    monkeypatch.setitem(app.config, "STREAM_URL", "http://127.0.0.1:9/api/v1/stream")
    res = client.get("/api/v1/stream?token=sbst_x&types=delivery.*")
    assert res.status_code == 307  # a threaded server hands streams to the stream service
    assert (
        res.headers["Location"] == "http://127.0.0.1:9/api/v1/stream?token=sbst_x&types=delivery.*"
    )


def test_a_tenant_s_stream_never_shows_another_tenant_s_entries(
    stream_base: str, app: Any, platform: ApiClient, api: ApiClient, admin_key: str
) -> None:
    """Both tenants publish; each stream (and each tenant's catch-up from the start) holds its
    own tenant's entries only — an operator's stream too, in the tenant it names."""
    other = platform.post("/api/v1/tenants", json={"name": "B", "external_id": "tenant-b"}).json
    other_key = make_key(app, None, ["admin"], tenant_id=other["id"])
    url = f"{stream_base}/api/v1/stream"
    mine = SSEClient(url, _auth(admin_key), types="event.published")
    theirs = SSEClient(url, _auth(other_key), types="event.published")
    operator = SSEClient(
        url, {**_auth(platform.key), "Switchboard-Tenant": "tenant-b"}, types="event.published"
    )
    for client, name in ((api, "a.only"), (ApiClient(api.client, other_key), "b.only")):
        assert client.post("/api/v1/event-types", json={"name": name}).status_code == 201
        assert client.post("/api/v1/events", json={"type": name, "data": {}}).status_code == 202
    got_mine = mine.collect(lambda got: any(m.json()["type"] == "a.only" for m in got))
    got_theirs = theirs.collect(lambda got: any(m.json()["type"] == "b.only" for m in got))
    got_operator = operator.collect(lambda got: any(m.json()["type"] == "b.only" for m in got))
    time.sleep(0.5)  # a leak would show up by now, entries arrive within milliseconds
    for client in (mine, theirs, operator):
        client.close()
    assert not any("b.only" in m.data for m in got_mine + _drain(mine))
    assert not any("a.only" in m.data for m in got_theirs + got_operator + _drain(theirs))
    replay = SSEClient(url, {**_auth(other_key), "Last-Event-ID": "0-1"}, types="event.*")
    caught_up = replay.collect(lambda got: any(m.json().get("type") == "b.only" for m in got))
    replay.close()
    assert not any("a.only" in m.data for m in caught_up)
