"""The gateway's serving model through a real gevent gateway service: many slow requests held at
once, bounded concurrency (per upstream, per integration) answered with 503 + Retry-After,
pool slots that come back however an answer ends, and slow clients cut off."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.peers import GEVENT_OPTIONS, GunicornServer, Receiver


class Gate:
    """An upstream responder that holds every request until ``open`` (or 30 s)."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.held = 0
        self._lock = threading.Lock()

    def __call__(self, req, n):
        with self._lock:
            self.held += 1
        try:
            self.opened.wait(30)
        finally:
            with self._lock:
                self.held -= 1
        return 200, {"Content-Type": "text/plain"}, b"done"

    def wait_held(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.held < count:
            assert time.monotonic() < deadline, f"only {self.held} of {count} held"
            time.sleep(0.02)


@pytest.fixture()
def gated():
    gate = Gate()
    peer = Receiver(gate)
    yield gate, peer
    gate.opened.set()
    peer.close()


def _service(app, tmp_path, **env):
    return GunicornServer(app, tmp_path / "gunicorn.log", options=GEVENT_OPTIONS, **env)


def _rest(base, key, urls, timeout_ms=10000):
    res = requests.post(
        f"{base}/api/v1/integrations",
        json={
            "name": "slow",
            "type": "api",
            "provider": "rest",
            "status": "active",
            "config": {"upstreams": [{"url": u} for u in urls], "timeout_ms": timeout_ms},
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert res.status_code == 201, res.text
    return res.json()["id"]


def _metric(base, key, reason):
    text = requests.get(
        f"{base}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10
    ).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("switchboard_gateway_refused_total{") and f'reason="{reason}"' in line
    )


def test_one_worker_holds_a_hundred_slow_requests_at_once(app, admin_key, gated, tmp_path):
    """One gevent worker, a hundred requests waiting on their upstream at the same time: none
    waits for another (a threaded worker would hold one thread each)."""
    gate, upstream = gated
    server = _service(app, tmp_path)
    try:
        base = server.start()
        gw = _rest(base, admin_key, [upstream.url])
        url = f"{base}/api/v1/gateway/{gw}/slow"
        headers = {"Authorization": f"Bearer {admin_key}"}
        with ThreadPoolExecutor(100) as pool:
            answers = [
                pool.submit(requests.get, url, headers=headers, timeout=60) for _ in range(100)
            ]
            gate.wait_held(100)  # all of them are at the upstream together
            gate.opened.set()
            assert [a.result().status_code for a in answers] == [200] * 100
        assert len(upstream.connections) <= 100
    finally:
        server.stop()
    assert "Traceback" not in server.log_path.read_text()


def test_a_saturated_upstream_is_a_503_with_retry_after_and_slots_come_back(
    app, admin_key, platform_key, gated, tmp_path
):
    gate, upstream = gated
    server = _service(
        app,
        tmp_path,
        SWITCHBOARD_GATEWAY_UPSTREAM_CONNECTIONS="2",
        SWITCHBOARD_GATEWAY_QUEUE_SECONDS="0.2",
    )
    try:
        base = server.start()
        gw = _rest(base, admin_key, [upstream.url])
        url = f"{base}/api/v1/gateway/{gw}/slow"
        headers = {"Authorization": f"Bearer {admin_key}"}
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(requests.get, url, headers=headers, timeout=60) for _ in range(2)]
            gate.wait_held(2)
            started = time.monotonic()
            refused = requests.get(url, headers=headers, timeout=30)
            waited = time.monotonic() - started
            assert refused.status_code == 503
            assert refused.headers["Content-Type"] == "application/problem+json"
            assert refused.headers["Retry-After"] == "1"
            assert "saturated" in refused.json()["detail"]
            assert waited >= 0.2  # it queued for a connection before giving up
            assert gate.held == 2  # and never reached the upstream
            gate.opened.set()
            assert [h.result().status_code for h in held] == [200, 200]
        assert requests.get(url, headers=headers, timeout=30).status_code == 200
        assert _metric(base, platform_key, "upstream_saturated") == 1
    finally:
        server.stop()


def test_the_integration_in_flight_limit_refuses_at_once(
    app, admin_key, platform_key, gated, tmp_path
):
    gate, upstream = gated
    server = _service(app, tmp_path, SWITCHBOARD_GATEWAY_MAX_IN_FLIGHT="3")
    try:
        base = server.start()
        gw, other = (_rest(base, admin_key, [upstream.url]) for _ in range(2))
        headers = {"Authorization": f"Bearer {admin_key}"}
        with ThreadPoolExecutor(4) as pool:
            held = [
                pool.submit(
                    requests.get, f"{base}/api/v1/gateway/{gw}/x", headers=headers, timeout=60
                )
                for _ in range(3)
            ]
            gate.wait_held(3)
            refused = requests.get(f"{base}/api/v1/gateway/{gw}/x", headers=headers, timeout=30)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert "in flight" in refused.json()["detail"]
            # The limit is the integration's: another one still gets through.
            through = pool.submit(
                requests.get, f"{base}/api/v1/gateway/{other}/x", headers=headers, timeout=60
            )
            gate.wait_held(4)
            gate.opened.set()
            assert [h.result().status_code for h in [*held, through]] == [200] * 4
        assert requests.get(f"{base}/api/v1/gateway/{gw}/x", headers=headers).status_code == 200
        assert _metric(base, platform_key, "in_flight_limit") == 1
    finally:
        server.stop()


class BigUpstream:
    """Answers every GET with ``size`` bytes; records sends the gateway cut off."""

    def __init__(self, size: int) -> None:
        outer = self
        self.aborted = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                try:
                    for _ in range(size // 65536):
                        self.wfile.write(b"x" * 65536)
                except (BrokenPipeError, ConnectionResetError):
                    outer.aborted.set()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_answers_cut_short_give_their_connection_slot_back(app, admin_key, tmp_path):
    """Clients that hang up mid-body, again and again, with one connection per upstream: each
    time the slot comes back (a closed connection the pool reopens), never 'saturated'."""
    upstream = BigUpstream(8 * 1024 * 1024)
    server = _service(
        app,
        tmp_path,
        SWITCHBOARD_GATEWAY_UPSTREAM_CONNECTIONS="1",
        SWITCHBOARD_GATEWAY_QUEUE_SECONDS="2",
    )
    try:
        base = server.start()
        gw = _rest(base, admin_key, [upstream.url])
        url = f"{base}/api/v1/gateway/{gw}/big"
        headers = {"Authorization": f"Bearer {admin_key}"}
        for _ in range(4):
            with requests.get(url, headers=headers, stream=True, timeout=30) as res:
                assert res.status_code == 200
                next(res.iter_content(65536))  # then hang up
        with requests.get(url, headers=headers, stream=True, timeout=30) as res:
            assert res.status_code == 200
            assert sum(len(part) for part in res.iter_content(1 << 20)) == 8 * 1024 * 1024
    finally:
        server.stop()
        upstream.close()


def test_a_client_that_stops_reading_is_cut_off_after_the_upstream_timeout(
    app, admin_key, tmp_path
):
    """A client that never reads a big answer does not pin the upstream connection: the
    gateway gives up writing after the integration's timeout and closes the upstream."""
    upstream = BigUpstream(64 * 1024 * 1024)
    server = _service(app, tmp_path)
    client = None
    try:
        base = server.start()
        gw = _rest(base, admin_key, [upstream.url], timeout_ms=1000)
        client = socket.create_connection(("127.0.0.1", server.port))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sendall(
            f"GET /api/v1/gateway/{gw}/big HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {admin_key}\r\n\r\n".encode()
        )
        assert upstream.aborted.wait(30), "the upstream connection was never let go"
    finally:
        if client is not None:
            client.close()
        server.stop()
        upstream.close()


def test_a_cold_key_s_bcrypt_check_does_not_stop_the_worker(app, admin_user, tmp_path):
    """bcrypt runs in gevent's thread pool: while one request verifies a key hashed at a high
    cost, the same single worker keeps answering others."""
    from app.auth.keys import hash_secret, key_prefix
    from app.store.db import database
    from app.store.models import ApiKey
    from tests.conftest import make_key

    key = make_key(app, admin_user, ["admin"])
    with app.app_context(), database.connection_context():
        ApiKey.update(key_hash=hash_secret(key, 14)).where(
            ApiKey.key_prefix == key_prefix(key)
        ).execute()
    server = _service(app, tmp_path)
    try:
        base = server.start()

        def cold() -> None:
            res = requests.get(
                f"{base}/api/v1/auth/whoami",
                headers={"Authorization": f"Bearer {key}"},
                timeout=120,
            )
            assert res.status_code == 200

        thread = threading.Thread(target=cold)
        thread.start()
        answered = 0  # health answers while the check runs (seconds at cost 14)
        with requests.Session() as session:
            while thread.is_alive():
                assert session.get(f"{base}/api/v1/health", timeout=120).status_code == 200
                answered += 1
        thread.join(120)
        # A blocked worker answers one health request once the check is over, maybe a few
        # more in the instant before the cold answer is written; a free one answers on.
        assert answered >= 20, answered
    finally:
        server.stop()
