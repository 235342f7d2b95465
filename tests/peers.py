"""Real local HTTP peers and worker processes for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from app.config import as_environment
from tests.conftest import ApiClient

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)


Responder = Callable[[Received, int], tuple[int, dict[str, str], bytes]]


class Receiver:
    """A threaded HTTP server on 127.0.0.1 that records requests and answers via ``respond``.

    ``respond(request, n)`` gets the request and its 1-based arrival number and returns
    ``(status, headers, body)``; it may sleep to simulate a slow peer.
    """

    def __init__(self, respond: Responder | None = None) -> None:
        self.respond: Responder = respond or (lambda req, n: (200, {}, b"ok"))
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = -1  # one write per response: no Nagle/delayed-ACK stalls on keep-alive

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Received(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                with receiver._lock:
                    receiver.requests.append(req)
                    n = len(receiver.requests)
                try:
                    status, headers, payload = receiver.respond(req, n)
                except Exception:  # noqa: BLE001
                    status, headers, payload = 500, {}, b"responder crashed"
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_POST = do_GET = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.connections: list[Any] = []

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256  # many connections at once must not overflow the backlog

            def process_request(self, request: Any, client_address: Any) -> None:
                receiver.connections.append(request)
                super().process_request(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(
        self, condition: Callable[[list[Received]], bool], timeout: float = 15
    ) -> list[Received]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                snapshot = list(self.requests)
            if condition(snapshot):
                return snapshot
            time.sleep(0.05)
        raise AssertionError(f"condition not met in {timeout}s; got {len(self.requests)} requests")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for conn in self.connections:  # keep-alive connections idle in handler threads
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


def worker_env(app: Any, **extra: str) -> dict[str, str]:
    """Environment for a worker.py process sharing the test app's database and Redis."""
    env = {**os.environ, **as_environment(app.config)}
    env.update(SWITCHBOARD_BCRYPT_ROUNDS="4", SWITCHBOARD_LOG_LEVEL="WARNING")
    env.update(extra)
    return env


class WorkerProcess:
    """A real ``python worker.py`` process."""

    def __init__(self, app: Any, **extra: str) -> None:
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, str(ROOT / "worker.py")],
            cwd=ROOT,
            env=worker_env(app, **extra),
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL: no cleanup, exactly like a crashed machine."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class GunicornServer:
    """``gunicorn app:create_app()`` on a free port of 127.0.0.1, sharing the test app's stores.

    The listening socket is bound here and handed to gunicorn (``fd://``): parallel test
    sessions never race for a port, so what answers on it is this server. ``start`` returns once
    ``/api/v1/health`` answers 200: a fresh worker on a busy 2-core machine can take seconds to
    answer, so every failure (refused, reset, read timeout) is retried until the deadline, and a
    server that exits early fails at once with its log.
    """

    def __init__(
        self,
        app: Any,
        log_path: Path,
        workers: int = 1,
        threads: int = 1,
        options: tuple[str, ...] = (),
        **extra_env: str,
    ) -> None:
        self.listener: socket.socket | None = socket.create_server(("127.0.0.1", 0))
        self.listener.set_inheritable(True)
        self.port = self.listener.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.command = [str(Path(sys.executable).parent / "gunicorn"), "-w", str(workers)]
        self.command += ["--threads", str(threads)]
        self.command += ["-b", f"fd://{self.listener.fileno()}", "--timeout", "120"]
        self.command += ["--graceful-timeout", "5", *options, "app:create_app()"]
        self.env = worker_env(app, **extra_env)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> str:
        import requests

        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(  # noqa: S603
                self.command,
                cwd=ROOT,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(self.listener.fileno(),) if self.listener else (),
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{self.base}/api/v1/health", timeout=5).status_code == 200:
                    return self.base
            except requests.RequestException:  # not listening yet, or too busy to answer
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("gunicorn did not start:\n" + self.log_path.read_text())
            time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [int(pid) for pid in children.split()]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.listener is not None:
            self.listener.close()
            self.listener = None


#: gunicorn options of the gateway service (``make run``'s, docs/operations.md's).
GEVENT_OPTIONS = (
    "-k",
    "gevent",
    "--worker-connections",
    "1000",
    "-c",
    "python:app.web.gunicorn_conf",
)


class HttpResponse:
    """A ``requests`` answer with the attributes tests read from Flask's test responses."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.status_code: int = response.status_code
        self.headers = response.headers
        self.data: bytes = response.content
        self.text: str = response.text
        self.content_type: str | None = response.headers.get("Content-Type")

    @property
    def json(self) -> Any:
        return self.response.json() if self.content_type and "json" in self.content_type else None

    def get_data(self, as_text: bool = False) -> bytes | str:
        return self.text if as_text else self.data

    def close(self) -> None:
        self.response.close()


class HttpApiClient(ApiClient):
    """``ApiClient``'s interface over real HTTP to a running server (keep-alive session)."""

    def __init__(self, base: str, key: str) -> None:
        import requests

        super().__init__(None, key)
        self.base = base
        self.session = requests.Session()
        del self.session.headers["Accept-Encoding"]  # like the test client: none of requests'

    def _open(self, method: str, url: str, headers: dict[str, str] | None, **kw: Any) -> Any:
        response = self.session.request(
            method,
            self.base + url,
            headers=self._headers(headers),
            allow_redirects=False,
            timeout=60,
            **kw,
        )
        return HttpResponse(response)
