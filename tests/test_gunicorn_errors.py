"""The API under real gunicorn, with the config ``make run`` and the deployment docs use.

What gunicorn refuses itself (an over-long request line) and what only a real server sends (a
chunked body, de-chunked by gunicorn) are answered as problem+json like every other error.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.peers import GunicornServer

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="gunicorn is POSIX"),
    pytest.mark.timeout(60),
]

PROBLEM = "application/problem+json"


@pytest.fixture()
def server(app: Any, tmp_path: Path) -> Iterator[str]:
    """gunicorn (gthread, with the config ``make run`` uses) on the session's stores."""
    gunicorn = GunicornServer(
        app,
        tmp_path / "gunicorn.log",
        threads=4,
        options=("-k", "gthread", "-c", "python:app.web.gunicorn_conf"),
        SWITCHBOARD_INSTANCE_PATH=str(tmp_path / "instance"),
        HOME=str(tmp_path),  # gunicorn's control socket goes to ~/.gunicorn
    )
    try:
        yield gunicorn.start()
    finally:
        gunicorn.stop()


def test_an_over_long_url_is_a_414_problem(server: str) -> None:
    res = requests.get(f"{server}/api/v1/integrations?q={'x' * 5000}", timeout=10)
    assert res.status_code == 414
    assert res.headers["Content-Type"] == PROBLEM
    assert res.json()["status"] == 414 and "too large" in res.json()["detail"]


def test_a_malformed_request_is_a_400_problem(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /api/v1/health HTTP/9.9\r\nHost: x\r\n\r\n")
        answer = sock.makefile("rb").read()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/problem+json" in head
    assert json.loads(body)["status"] == 400


def test_a_chunked_body_over_the_limit_is_a_413_problem(server: str) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: requests sends it chunked
        yield b'{"email": "a@example.com", "password": "'
        for _ in range(1100):
            yield b"x" * 1024
        yield b'"}'

    res = requests.post(
        f"{server}/api/v1/auth/login",
        data=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert res.status_code == 413 and res.headers["Content-Type"] == PROBLEM
    small = requests.post(
        f"{server}/api/v1/auth/login",
        data=iter([b'{"email": "a@example.com", ', b'"password": "nope"}']),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert small.status_code == 401  # a chunked body under the limit is read whole
