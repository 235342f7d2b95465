"""JSON logs: one access line per request, and the request id in the worker's lines it caused."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from tests.conftest import ApiClient
from tests.peers import ROOT, GunicornServer, Receiver, worker_env

JSON_LOGS = {"SWITCHBOARD_LOG_FORMAT": "json", "SWITCHBOARD_LOG_LEVEL": "INFO"}


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def wait_for_line(path: Path, match: Any, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in json_lines(path):
            if match(line):
                return line
        time.sleep(0.1)
    raise AssertionError(f"no matching log line in {path}:\n{path.read_text()[-3000:]}")


def test_access_lines_are_json_with_request_id_key_and_route(
    app: Any, admin_key: str, tmp_path: Path
) -> None:
    log = tmp_path / "gunicorn.log"
    server = GunicornServer(app, log, **JSON_LOGS)
    try:
        base = server.start()
        res = requests.get(
            f"{base}/api/v1/auth/whoami",
            headers={"Authorization": f"Bearer {admin_key}", "X-Request-Id": "req-access-1"},
            timeout=10,
        )
        assert res.headers["X-Request-Id"] == "req-access-1"
        line = wait_for_line(log, lambda line: line.get("request_id") == "req-access-1")
    finally:
        server.stop()
    assert line["logger"] == "switchboard.access" and line["level"] == "INFO"
    assert line["route"] == "/api/v1/auth/whoami" and line["method"] == "GET"
    assert line["status"] == 200 and line["duration_ms"] > 0
    assert line["key_prefix"] == admin_key[:16]
    assert admin_key not in log.read_text()  # only the prefix, never the key


def test_worker_lines_carry_the_request_id_that_caused_them(
    app: Any, api: ApiClient, integration: dict[str, Any], receiver: Receiver, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    slack = Receiver(lambda req, n: (200, {}, b"ok"))
    with log.open("wb") as out:
        worker = subprocess.Popen(  # noqa: S603
            [sys.executable, str(ROOT / "worker.py")],
            cwd=ROOT,
            env=worker_env(app, **JSON_LOGS),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert api.post("/api/v1/event-types", json={"name": "order.paid"}).status_code == 201
        hook = {"url": receiver.url, "events": ["order.paid"], "integration_id": integration["id"]}
        assert api.post("/api/v1/webhooks", json=hook).status_code == 201
        res = api.post(
            "/api/v1/events",
            json={"type": "order.paid", "data": {}},
            headers={"X-Request-Id": "req-publish-7"},
        )
        assert res.status_code == 202
        delivered = wait_for_line(log, lambda line: line.get("request_id") == "req-publish-7")
        assert delivered["logger"] == "switchboard.deliveries"
        assert delivered["event_id"] == res.json["id"] and delivered["outcome"] == "succeeded"

        notify = api.post(
            "/api/v1/integrations",
            json={
                "name": "n",
                "type": "notification",
                "provider": "slack",
                "status": "active",
                "config": {"webhook_url": slack.url + "/T/B/X"},
            },
        ).json
        res = api.post(
            f"/api/v1/integrations/{notify['id']}/actions/send_message",
            json={"text": "hi"},
            headers={"X-Request-Id": "req-action-9"},
        )
        assert res.status_code == 202
        job_lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            "Successfully completed" in line["message"] or "Job OK" in line["message"]
            for line in job_lines
        ):
            time.sleep(0.1)
            job_lines = [
                line for line in json_lines(log) if line.get("request_id") == "req-action-9"
            ]
        assert job_lines, log.read_text()[-3000:]
        assert {line["logger"] for line in job_lines} >= {"rq.worker"}
        assert any(res.json["job_id"] in line["message"] for line in job_lines)
    finally:
        worker.terminate()
        worker.wait(10)
        slack.close()
