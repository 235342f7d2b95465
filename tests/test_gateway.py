"""The API gateway through the HTTP API: balancing, ejection, retries, transforms, hygiene,
logging, SSRF, and 50 MiB streamed both ways through a real gunicorn without buffering.

``api`` here is real HTTP to the gateway service as production runs it (gunicorn with a gevent
worker, one per test module); tests that need other settings build their own app."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import requests

from app import create_app
from tests.conftest import ApiClient, make_key, make_user
from tests.peers import GEVENT_OPTIONS, GunicornServer, HttpApiClient, Receiver


@pytest.fixture(scope="module")
def gateway_service(app, tmp_path_factory):
    """The gateway service: the app under gunicorn's gevent worker, sharing the test stores."""
    server = GunicornServer(
        app, tmp_path_factory.mktemp("gateway") / "gunicorn.log", options=GEVENT_OPTIONS
    )
    server.start()
    yield server
    server.stop()
    assert "Traceback" not in server.log_path.read_text()


@pytest.fixture()
def api(gateway_service, admin_key):
    return HttpApiClient(gateway_service.base, admin_key)


def _named(name, status=200):
    return lambda req, n: (
        status,
        {"Content-Type": "text/plain", "X-Upstream": name},
        name.encode(),
    )


@pytest.fixture()
def upstreams():
    peers = [Receiver(_named("a")), Receiver(_named("b"))]
    yield peers
    for peer in peers:
        peer.close()


def _rest(api, urls_weights, **config):
    body = {
        "name": "backend",
        "type": "api",
        "provider": "rest",
        "status": "active",
        "config": {
            "upstreams": [{"url": u, "weight": w} for u, w in urls_weights],
            "timeout_ms": 3000,
            **config,
        },
    }
    res = api.post("/api/v1/integrations", json=body)
    assert res.status_code == 201, res.json
    return res.json


def _gateway_logs(api, integration_id, count, timeout=15.0):
    """The integration's gateway logs once ``count`` are written (the writer batches them)."""
    url = f"/api/v1/integrations/{integration_id}/logs?event_type=gateway.request&limit=200"
    deadline = time.monotonic() + timeout
    while True:
        logs = api.get(url).json["items"]
        if len(logs) >= count or time.monotonic() > deadline:
            return logs
        time.sleep(0.05)


def _closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_weighted_round_robin(api, upstreams):
    a, b = upstreams
    gw = _rest(api, [(a.url, 3), (b.url, 1)])
    counts = {"a": 0, "b": 0}
    for _ in range(300):
        res = api.get(f"/api/v1/gateway/{gw['id']}/items")
        assert res.status_code == 200
        counts[res.text] += 1
    assert counts == {"a": 225, "b": 75}
    assert a.requests[0].path == "/items"


def test_dead_upstream_is_ejected_and_comes_back(app, admin_key, upstreams):
    a, _ = upstreams
    state = {"down": True}
    flaky = Receiver(lambda req, n: (503, {}, b"down") if state["down"] else (200, {}, b"flaky"))
    fast = create_app({**app.config, "GATEWAY_COOLDOWN_SECONDS": 1, "GATEWAY_FAILURE_THRESHOLD": 2})
    api = ApiClient(fast.test_client(), admin_key)
    try:
        gw = _rest(api, [(a.url, 1), (flaky.url, 1)])
        bodies = [api.get(f"/api/v1/gateway/{gw['id']}/x").text for _ in range(20)]
        assert bodies == ["a"] * 20  # GETs that hit the 503 were retried on "a"
        assert len(flaky.requests) == 2  # ejected after 2 failures: no more traffic
        state["down"] = False
        time.sleep(1.2)
        bodies = [api.get(f"/api/v1/gateway/{gw['id']}/x").text for _ in range(10)]
        assert "flaky" in bodies and "a" in bodies
    finally:
        flaky.close()


def test_a_recovered_upstream_is_back_long_before_its_cooldown_ends(app, admin_key):
    """Every upstream ejected: a probe a second still goes through (to the one ejected longest
    ago), so a short outage is not stretched to the whole cooldown (120 s here)."""
    state = {"down": True}
    flaky = Receiver(lambda req, n: (503, {}, b"down") if state["down"] else (200, {}, b"up"))
    patient = create_app(
        {**app.config, "GATEWAY_COOLDOWN_SECONDS": 120, "GATEWAY_PROBE_INTERVAL": 1}
    )
    api = ApiClient(patient.test_client(), admin_key)
    try:
        gw = _rest(api, [(flaky.url, 1)])
        url = f"/api/v1/gateway/{gw['id']}/x"
        assert [api.get(url).status_code for _ in range(3)] == [503] * 3  # the upstream's own
        refused = api.get(url)
        assert refused.status_code == 503 and refused.content_type == "application/problem+json"
        # Still down for a while: only a trickle of probes reaches it, each failing again.
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            assert api.get(url).status_code in (503, 502)
            time.sleep(0.05)
        assert 3 <= len(flaky.requests) <= 3 + 4
        state["down"] = False
        deadline = time.monotonic() + 30  # far below the cooldown
        while (res := api.get(url)).status_code != 200:
            assert time.monotonic() < deadline, "the recovered upstream was not probed"
            time.sleep(0.05)
        assert res.text == "up"
        assert all(api.get(url).text == "up" for _ in range(5))  # healthy again, not a trickle
    finally:
        flaky.close()


def test_connect_errors_retry_idempotent_only(api, upstreams):
    a, _ = upstreams
    dead = _closed_port_url()
    gw = _rest(api, [(dead, 1), (a.url, 1)])
    for _ in range(4):
        assert api.get(f"/api/v1/gateway/{gw['id']}/ok").status_code == 200
    posts = [
        api.post(f"/api/v1/gateway/{gw['id']}/ok", json={"n": 1}).status_code for _ in range(2)
    ]
    assert set(posts) <= {200, 502}


def test_post_not_retried_get_retried(api):
    hits = {"a": 0, "b": 0}

    def failing(name):
        def respond(req, n):
            hits[name] += 1
            return 503, {}, b"unavailable"

        return respond

    a, b = Receiver(failing("a")), Receiver(failing("b"))
    try:
        gw = _rest(api, [(a.url, 1), (b.url, 1)])
        res = api.post(f"/api/v1/gateway/{gw['id']}/orders", json={"n": 1})
        assert res.status_code == 503 and res.text == "unavailable"  # the upstream's own answer
        assert hits["a"] + hits["b"] == 1
        res = api.get(f"/api/v1/gateway/{gw['id']}/orders")
        assert hits["a"] + hits["b"] == 3  # the GET tried both upstreams
        assert res.status_code == 503
    finally:
        a.close()
        b.close()


def test_all_upstreams_down_is_503_problem(app, admin_key):
    fast = create_app({**app.config, "GATEWAY_FAILURE_THRESHOLD": 1})
    api = ApiClient(fast.test_client(), admin_key)
    gw = _rest(api, [(_closed_port_url(), 1), (_closed_port_url(), 1)])
    first = api.get(f"/api/v1/gateway/{gw['id']}/x")
    assert first.status_code == 502 and first.content_type == "application/problem+json"
    again = api.get(f"/api/v1/gateway/{gw['id']}/x")
    assert again.status_code == 503 and again.content_type == "application/problem+json"


def test_a_slow_upstream_is_a_504_and_counts_as_a_failure(app, admin_key):
    fast = create_app({**app.config, "GATEWAY_FAILURE_THRESHOLD": 1})
    api = ApiClient(fast.test_client(), admin_key)
    slow = Receiver(lambda req, n: (time.sleep(1.0), (200, {}, b"late"))[1])
    try:
        gw = _rest(api, [(slow.url, 1)], timeout_ms=200)
        res = api.get(f"/api/v1/gateway/{gw['id']}/slow")
        assert res.status_code == 504 and res.content_type == "application/problem+json"
        assert "did not answer within 0.2 s" in res.json["detail"]
        # The timeout ejected the only upstream (threshold 1): no second wait on it.
        assert api.get(f"/api/v1/gateway/{gw['id']}/slow").status_code == 503
        assert len(slow.requests) == 1
    finally:
        slow.close()


def test_upstream_sees_the_clients_encoding_choice(api, receiver):
    gw = _rest(api, [(receiver.url, 1)])
    assert api.get(f"/api/v1/gateway/{gw['id']}/plain").status_code == 200
    # A client that asked for no compression gets none: nothing asks the upstream for gzip.
    assert receiver.requests[-1].headers["accept-encoding"] == "identity"
    res = api.get(
        f"/api/v1/gateway/{gw['id']}/mine",
        headers={"Accept-Encoding": "gzip", "User-Agent": "client/1.0"},
    )
    assert res.status_code == 200
    mine = receiver.requests[-1].headers
    assert mine["accept-encoding"] == "gzip" and mine["user-agent"] == "client/1.0"


def test_head_and_no_content_answers_are_logged_and_keep_the_connection(api, receiver):
    """The server never iterates these bodies: the log row and the connection's return to the
    pool must not depend on it."""
    receiver.respond = lambda req, n: (
        (204, {}, b"") if req.path.endswith("/empty") else (200, {"X-Kind": "t"}, b"hello")
    )
    gw = _rest(api, [(receiver.url, 1)])
    base = f"/api/v1/gateway/{gw['id']}"
    for _ in range(3):
        head = api._open("HEAD", f"{base}/thing", None)
        assert head.status_code == 200 and head.data == b"" and head.headers["X-Kind"] == "t"
        head.close()
        assert api.get(f"{base}/empty").status_code == 204
        assert api.get(f"{base}/thing").data == b"hello"
    logs = _gateway_logs(api, gw["id"], 9)
    assert sorted(entry["event_data"]["method"] for entry in logs) == ["GET"] * 6 + ["HEAD"] * 3
    assert len(receiver.connections) == 1  # one kept-alive connection for all nine


def test_transform_auth_and_header_hygiene(api, admin_key, receiver):
    gw = _rest(
        api,
        [(receiver.url, 1)],
        auth={"type": "bearer", "token": "upstream-token-xyz"},
        headers={"X-Default": "d", "X-Client": "default-loses"},
        transform={
            "remove": {"headers": ["X-Remove-Me"], "querystring": ["drop"]},
            "rename": {"headers": {"X-Old": "X-New"}, "querystring": {"old": "new"}},
            "replace": {"headers": {"X-Client": "replaced"}, "querystring": {"q": "replaced"}},
            "add": {
                "headers": {"X-Added": "1", "X-Client": "not-added"},
                "querystring": {"added": "1"},
            },
            "append": {"headers": {"X-Multi": "two"}, "querystring": {"tag": "t2"}},
        },
    )
    res = api.get(
        f"/api/v1/gateway/{gw['id']}/v1/things?drop=1&old=o&q=orig&tag=t1",
        headers={
            "X-Remove-Me": "secret-ish",
            "X-Old": "moved",
            "X-Client": "mine",
            "X-Multi": "one",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "hop",
            "TE": "trailers",
            "X-Forwarded-For": "198.51.100.7",
            "X-API-Key": "should-not-pass",
        },
    )
    assert res.status_code == 200
    seen = receiver.requests[-1]
    h = seen.headers
    assert seen.path.startswith("/v1/things?")
    query = sorted(seen.path.split("?", 1)[1].split("&"))
    assert query == sorted(["new=o", "q=replaced", "tag=t1", "tag=t2", "added=1"])
    assert "x-remove-me" not in h and "x-old" not in h and h["x-new"] == "moved"
    assert h["x-client"] == "replaced" and h["x-added"] == "1" and h["x-default"] == "d"
    assert h["x-multi"] == "one, two"
    assert h["authorization"] == "Bearer upstream-token-xyz"
    assert admin_key not in json.dumps(h) and "x-api-key" not in h
    assert "x-hop" not in h and "te" not in h
    assert h["x-forwarded-for"] == "198.51.100.7, 127.0.0.1" and h["x-forwarded-proto"] == "http"
    assert h["x-request-id"] == res.headers["X-Request-Id"]


@pytest.mark.parametrize(
    "auth, header, expected",
    [
        ({"type": "basic", "username": "u", "password": "p"}, "authorization", "Basic dTpw"),
        (
            {"type": "api_key", "header": "X-Upstream-Key", "value": "k-123"},
            "x-upstream-key",
            "k-123",
        ),
    ],
)
def test_auth_kinds(api, receiver, auth, header, expected):
    gw = _rest(api, [(receiver.url, 1)], auth=auth)
    assert api.get(f"/api/v1/gateway/{gw['id']}/").status_code == 200
    assert receiver.requests[-1].headers[header] == expected


def test_logging_with_redacted_bodies(api, receiver):
    gw = _rest(api, [(receiver.url, 1)], log_bodies=True)
    res = api.post(
        f"/api/v1/gateway/{gw['id']}/login",
        json={"user": "x", "password": "hunter2", "token": "abc"},
    )
    assert res.status_code == 200
    logs = _gateway_logs(api, gw["id"], 1)
    entry = logs[0]
    data = entry["event_data"]
    assert (
        data["method"] == "POST" and data["path"] == "/login" and data["upstream"] == receiver.url
    )
    assert data["status_code"] == 200 and data["bytes_out"] == 2 and data["bytes_in"] > 0
    assert entry["response_time_ms"] is not None
    assert "hunter2" not in json.dumps(logs) and '"abc"' not in json.dumps(logs)
    assert "[redacted]" in data["request_body"]
    key_id = api.get("/api/v1/auth/whoami").json["id"]
    usage = api.get(f"/api/v1/api-keys/{key_id}/usage?window=24h").json
    assert usage["totals"]["gateway_bytes"] >= 2


# Secret shapes a logged body may hold; every secret value contains "S3KRIT".
SECRET_CORPUS = [
    ("application/json", '{"password": "S3KRIT1", "sku": "visible-42"}'),
    ("application/json", '{"Auth": {"Private_Key": "S3KRIT2"}, "PWD": "S3KRIT3"}'),
    ("application/json", '[{"api-key": "S3KRIT4"}, {"list": [{"Client_Secret": "S3KRIT5"}]}]'),
    ("application/json", json.dumps({"payload": json.dumps({"client_secret": "S3KRIT6"})})),
    ("text/plain", "GET / HTTP/1.1\r\nAuthorization: Bearer S3KRIT7\r\nAccept: */*\r\n"),
    ("application/x-www-form-urlencoded", "password=S3KRIT8&sku=visible"),
    ("application/xml", '<auth><password>S3KRIT9</password><token t="x">S3KRIT10</token></auth>'),
    ("application/xml", '<cred secret="S3KRIT11" name="visible"/>'),
    ("application/json", '{"password": "S3KRIT12", "pad": "' + "x" * 5000 + '"}'),  # cut at 4 KiB
    ("text/plain", "call it with Bearer S3KRIT13 please"),
    (
        "application/json",
        '{"refresh_token": "S3KRIT14", "SESSION": "S3KRIT15", "x-api-key": "S3KRIT16", '
        '"Cookie": "sid=S3KRIT17", "access_token": 12345678}',
    ),
    (
        "application/json",
        json.dumps({"payload": json.dumps({"password": "S3KRIT18"}), "pad": "x" * 5000}),
    ),
]


def test_logged_bodies_mask_every_secret_shape_and_only_admins_read_them(app, api):
    """Structural redaction over a corpus of secret shapes, both ways; read-only users' logs:read
    keys get the entries without the bodies."""
    echo = Receiver(lambda req, n: (200, {"Content-Type": "text/plain"}, req.body))
    try:
        gw = _rest(api, [(echo.url, 1)], log_bodies=True)
        for content_type, body in SECRET_CORPUS:
            res = api.post(
                f"/api/v1/gateway/{gw['id']}/echo",
                data=body,
                headers={"Content-Type": content_type},
            )
            assert res.status_code == 200
        logs = _gateway_logs(api, gw["id"], len(SECRET_CORPUS))
        assert len(logs) == len(SECRET_CORPUS)
        assert "S3KRIT" not in json.dumps(logs)
        bodies = [entry["event_data"]["request_body"] for entry in logs]
        assert any("visible-42" in body for body in bodies)  # only credentials are masked
        assert all("[redacted]" in entry["event_data"]["response_body"] for entry in logs)

        reader = make_user(app, "reader@example.com", role="readonly")
        readonly = ApiClient(app.test_client(), make_key(app, reader, ["logs:read"]))
        seen = readonly.get(f"/api/v1/integrations/{gw['id']}/logs").json["items"]
        assert len(seen) == len(SECRET_CORPUS)
        assert not any(
            "request_body" in e["event_data"] or "response_body" in e["event_data"] for e in seen
        )
        assert all(e["event_data"]["path"] == "/echo" for e in seen)
    finally:
        echo.close()


def test_scope_ssrf_and_non_rest(app, api, admin_user, receiver):
    gw = _rest(api, [(receiver.url, 1)])
    reader = ApiClient(app.test_client(), make_key(app, admin_user, ["integrations:read"]))
    assert reader.get(f"/api/v1/gateway/{gw['id']}/x").status_code == 403
    strict = create_app({**app.config, "ALLOWED_NETWORKS": ""})
    res = ApiClient(strict.test_client(), api.key).get(f"/api/v1/gateway/{gw['id']}/x")
    assert res.status_code == 502 and "SSRF" in res.json["detail"]
    assert receiver.requests == []
    assert api.get("/api/v1/gateway/int_missing/x").status_code == 404


def _peak_rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_large_bodies_stream_without_buffering(app, api, admin_key, tmp_path):
    """50 MiB up and 50 MiB down through gunicorn: the worker's peak RSS grows far less."""
    size = 50 * 1024 * 1024
    chunk = b"x" * (1024 * 1024)

    class BigUpstream:
        def __init__(self):
            import threading
            from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

            outer = self
            self.received = 0

            class Handler(BaseHTTPRequestHandler):
                protocol_version = "HTTP/1.1"

                def do_POST(self):
                    remaining = int(self.headers.get("Content-Length") or 0)
                    if self.headers.get("Transfer-Encoding") == "chunked":
                        while True:
                            n = int(self.rfile.readline().strip(), 16)
                            if n == 0:
                                self.rfile.readline()
                                break
                            outer.received += len(self.rfile.read(n))
                            self.rfile.readline()
                    while remaining:
                        data = self.rfile.read(min(remaining, 1 << 20))
                        outer.received += len(data)
                        remaining -= len(data)
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")

                def do_GET(self):
                    self.send_response(200)
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    for _ in range(size // len(chunk)):
                        self.wfile.write(chunk)

                def log_message(self, *a):
                    pass

            self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            threading.Thread(target=self.server.serve_forever, daemon=True).start()
            self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    upstream = BigUpstream()
    gw = _rest(api, [(upstream.url, 1)], timeout_ms=60000)
    server = GunicornServer(app, tmp_path / "gunicorn.log", workers=1, options=GEVENT_OPTIONS)
    try:
        base = server.start()
        worker_pid = server.worker_pids()[0]
        headers = {"Authorization": f"Bearer {admin_key}"}
        requests.get(f"{base}/api/v1/gateway/{gw['id']}/warm", headers=headers, timeout=10)
        before = _peak_rss_kib(worker_pid)

        def upload():
            for _ in range(size // len(chunk)):
                yield chunk

        res = requests.post(
            f"{base}/api/v1/gateway/{gw['id']}/upload", data=upload(), headers=headers, timeout=120
        )
        assert res.status_code == 200 and upstream.received == size
        got = 0
        with requests.get(
            f"{base}/api/v1/gateway/{gw['id']}/download", headers=headers, stream=True, timeout=120
        ) as res:
            assert res.status_code == 200
            for part in res.iter_content(1 << 20):
                got += len(part)
        assert got == size
        growth_mib = (_peak_rss_kib(worker_pid) - before) / 1024
        assert growth_mib < 20, f"worker peak RSS grew {growth_mib:.1f} MiB for 50 MiB bodies"
    finally:
        server.stop()
        upstream.server.shutdown()
        upstream.server.server_close()


def test_dot_segments_cannot_climb_out_of_the_base_path(api, receiver):
    gw = _rest(api, [(receiver.url + "/public/v1", 1)])
    res = api.get(f"/api/v1/gateway/{gw['id']}/..%2f..%2fadmin")
    assert res.status_code == 400 and res.content_type == "application/problem+json"
    assert receiver.requests == []
    assert api.get(f"/api/v1/gateway/{gw['id']}/items").status_code == 200
    assert receiver.requests[-1].path == "/public/v1/items"
    # Encoded once more, dots are just text: sent as the client wrote them, never collapsed.
    assert api.get(f"/api/v1/gateway/{gw['id']}/%252e%252e/admin").status_code == 200
    assert receiver.requests[-1].path == "/public/v1/%252e%252e/admin"


def test_the_path_is_sent_as_the_client_meant_it(api, receiver):
    """ "#", "?", "%" and spaces in a path segment stay in it; the query stays the query."""
    gw = _rest(api, [(receiver.url + "/base", 1)], transform={"add": {"querystring": {"k": "v"}}})
    cases = {
        "a%23b?x=1": "/base/a%23b?x=1&k=v",
        "a%3Fb?x=1": "/base/a%3Fb?x=1&k=v",
        "100%25/a%20b/%C3%A9?q=a%20b": "/base/100%25/a%20b/%C3%A9?q=a+b&k=v",
    }
    for sent, received in cases.items():
        assert api.get(f"/api/v1/gateway/{gw['id']}/{sent}").status_code == 200
        assert receiver.requests[-1].path == received


def test_logs_are_batched_off_the_request_path_and_flushed_on_graceful_exit(
    app, admin_key, api, upstreams, tmp_path
):
    """Two gunicorn workers proxy 120 requests and are stopped (SIGTERM) at once: every
    request's log row is in the database."""
    a, _ = upstreams
    gw = _rest(api, [(a.url, 1)])
    # A flush interval far longer than the test: only the exit-time flush can write the rows.
    server = GunicornServer(
        app,
        tmp_path / "gunicorn.log",
        workers=2,
        options=GEVENT_OPTIONS,
        SWITCHBOARD_GATEWAY_LOG_FLUSH_INTERVAL="600",
    )
    headers = {"Authorization": f"Bearer {admin_key}"}
    try:
        base = server.start()
        with requests.Session() as session:
            for n in range(120):
                res = session.get(f"{base}/api/v1/gateway/{gw['id']}/n{n}", headers=headers)
                assert res.status_code == 200
        assert not api.get(f"/api/v1/integrations/{gw['id']}/logs?event_type=gateway.request").json[
            "items"
        ]  # nothing was written on the request path
    finally:
        server.stop()
    logs = _gateway_logs(api, gw["id"], 120, timeout=0)
    assert sorted(entry["event_data"]["path"] for entry in logs) == sorted(
        f"/n{n}" for n in range(120)
    )
    assert "Traceback" not in (tmp_path / "gunicorn.log").read_text()


def test_risky_upstream_headers_stay_off_the_api_origin(api):
    """Cookies and CORS headers from an upstream are dropped (cookies may be allowed), Location
    is rewritten into the gateway or dropped, nosniff is added, and "//" reaches the upstream."""

    def respond(req, n):
        locations = {
            "/base/inside": None,  # filled below: an absolute URL inside the upstream
            "/base/relative": "/base/items/3",
            "/base/outside": "https://evil.example/steal",
            "/base/sibling": "/elsewhere",
        }
        headers = {
            "Content-Type": "text/plain",
            "Set-Cookie": "sb_session=planted; Path=/",
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Credentials": "true",
            "X-Content-Type-Options": "whatever",
        }
        path = req.path.split("?")[0]
        location = f"{upstream.url}/base/items/2?x=1" if path == "/base/inside" else None
        location = location or locations.get(path)
        if location:
            headers["Location"] = location
        return (302 if location else 200), headers, b"ok"

    upstream = Receiver(respond)
    try:
        integration = _rest(api, [(upstream.url + "/base", 1)])
        gateway = f"/api/v1/gateway/{integration['id']}"
        answer = api.get(f"{gateway}/inside", headers={"Origin": "https://evil.example"})
        assert answer.status_code == 302
        assert answer.headers["Location"] == f"{gateway}/items/2?x=1"
        assert "Set-Cookie" not in answer.headers
        assert not [h for h in answer.headers.keys() if h.lower().startswith("access-control")]
        assert answer.headers["X-Content-Type-Options"] == "nosniff"  # once, not repeated
        assert api.get(f"{gateway}/relative").headers["Location"] == f"{gateway}/items/3"
        for elsewhere in ("outside", "sibling"):
            answer = api.get(f"{gateway}/{elsewhere}")
            assert answer.status_code == 302 and "Location" not in answer.headers

        for path, upstream_path in (("a//b", "/base/a//b"), ("/x", "/base//x")):
            answer = api.get(f"{gateway}/{path}")
            assert answer.status_code == 200, (path, answer.status_code, answer.data[:200])
            assert upstream.requests[-1].path == upstream_path

        allowing = _rest(api, [(upstream.url + "/base", 1)], allow_cookies=True)
        answer = api.get(f"/api/v1/gateway/{allowing['id']}/plain")
        assert answer.headers["Set-Cookie"] == "sb_session=planted; Path=/"
        assert "Access-Control-Allow-Origin" not in answer.headers
    finally:
        upstream.close()
