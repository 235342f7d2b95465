"""Security hardening (issue 10): what members can read, what is checked on save, what is logged."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import ApiClient, create_github_integration, make_key, make_user
from tests.peers import ROOT, Receiver, WorkerProcess, worker_env


def _wait(predicate, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_guard_refusal_does_not_reveal_name_resolution(app, api, client, integration):
    """Delivery history and logs say the guard refused, not what `localhost` resolved to."""
    api.post("/api/v1/event-types", json={"name": "order.paid", "description": "paid"})
    body = {"url": "http://localhost:9/x", "events": ["order.paid"]}
    hook = api.post("/api/v1/webhooks", json={**body, "integration_id": integration["id"]}).json
    member = ApiClient(
        client, make_key(app, make_user(app, "m@example.com"), ["webhooks:read", "logs:read"])
    )
    strict = WorkerProcess(app, SWITCHBOARD_ALLOWED_NETWORKS="")
    try:
        assert (
            api.post("/api/v1/events", json={"type": "order.paid", "data": {}}).status_code == 202
        )
        deliveries = _wait(
            lambda: [
                d
                for d in member.get(f"/api/v1/webhooks/{hook['id']}/deliveries").json["items"]
                if d["attempts"] >= 1
            ]
        )
        logs = _wait(lambda: member.get("/api/v1/logs").json["items"])
    finally:
        strict.stop()
    seen = json.dumps(deliveries) + json.dumps(logs)
    assert "destination refused by the outbound guard" in seen
    assert "127.0.0.1" not in seen and "resolved from" not in seen


def test_connector_destination_urls_are_checked_on_save(api):
    """REST upstreams and Slack URLs pass the SSRF guard on save, like webhook URLs."""
    rest = {"name": "r", "type": "api", "provider": "rest"}
    res = api.post(
        "/api/v1/integrations",
        json={
            **rest,
            "config": {"upstreams": [{"url": "http://127.0.0.1:9"}, {"url": "http://10.0.0.1"}]},
        },
    )
    assert res.status_code == 422, res.json
    assert list(res.json["errors"]) == ["config.upstreams.1.url"]
    assert "private address" in res.json["errors"]["config.upstreams.1.url"][0]
    assert "10.0.0.1" not in json.dumps(res.json)

    slack = {"name": "s", "type": "notification", "provider": "slack"}
    res = api.post(
        "/api/v1/integrations",
        json={**slack, "config": {"webhook_url": "http://169.254.169.254/latest"}},
    )
    assert res.status_code == 422, res.json
    assert "link-local address" in res.json["errors"]["config.webhook_url"][0]
    bot = {"bot_token": "xoxb-1", "channel": "#x", "api_base_url": "http://192.168.1.1/api"}
    res = api.post("/api/v1/integrations", json={**slack, "config": bot})
    assert res.status_code == 422, res.json
    assert "private address" in res.json["errors"]["config.api_base_url"][0]

    ok = api.post(
        "/api/v1/integrations",
        json={**rest, "config": {"upstreams": [{"url": "http://127.0.0.1:9"}]}},
    )
    assert ok.status_code == 201, ok.json
    res = api.patch(
        f"/api/v1/integrations/{ok.json['id']}",
        json={"config": {"upstreams": [{"url": "http://host.invalid"}]}},
    )
    assert res.status_code == 422, res.json
    message = res.json["errors"]["config.upstreams.0.url"][0]
    assert message == "the URL's host does not resolve"  # no "open a range" hint: it would not help


def test_webhook_url_that_does_not_resolve_says_so(api, integration):
    body = {"url": "http://host.invalid/x", "events": ["*"], "integration_id": integration["id"]}
    res = api.post("/api/v1/webhooks", json=body)
    assert res.status_code == 422
    assert res.json["errors"]["url"] == ["the URL's host does not resolve"]


def test_worker_logs_no_action_input(app, api, tmp_path):
    """A real worker at DEBUG runs a `rest` action; neither its header nor its query is logged."""
    secret, query_secret = "Bearer s3cr3t-header-value", "s3cr3t-query-value"
    peer = Receiver(lambda req, n: (200, {"Content-Type": "application/json"}, b"{}"))
    integration = api.post(
        "/api/v1/integrations",
        json={
            "name": "r",
            "type": "api",
            "provider": "rest",
            "status": "active",
            "config": {"upstreams": [{"url": peer.url}]},
        },
    ).json
    queued = api.post(
        f"/api/v1/integrations/{integration['id']}/actions/request",
        json={
            "method": "GET",
            "path": "/x",
            "headers": {"Authorization": secret},
            "query": {"key": query_secret},
        },
    )
    assert queued.status_code == 202, queued.json
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        worker = subprocess.Popen(  # noqa: S603
            [sys.executable, "worker.py"],
            cwd=ROOT,
            env=worker_env(app, SWITCHBOARD_LOG_LEVEL="DEBUG"),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            job = _wait(
                lambda: (
                    (j := api.get(f"/api/v1/jobs/{queued.json['job_id']}").json)["status"]
                    in ("finished", "failed")
                    and j
                )
            )
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(10)
            peer.close()
    assert job["status"] == "finished", job
    assert peer.requests[0].headers["authorization"] == secret  # the action really ran
    logged = out.read_text() + err.read_text()
    assert "run_action" in logged or "connectors" in logged  # the worker did log at DEBUG
    assert [line for line in logged.splitlines() if "s3cr3t" in line] == []


def _github_post(client, integration_id, body, delivery, secret="s" * 24, event="push"):
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signature,
    }
    return client.post(f"/api/v1/inbound/{integration_id}", data=body, headers=headers)


def _push(pushed_at):
    return json.dumps(
        {
            "ref": "refs/heads/main",
            "after": "a" * 40,
            "repository": {"full_name": "acme/shop", "pushed_at": pushed_at},
            "sender": {"login": "octocat"},
        }
    ).encode()


def test_captured_github_payload_cannot_be_replayed(api, client):
    """GitHub does not sign X-GitHub-Delivery: a captured body under a fresh id is refused."""
    gh = create_github_integration(api)
    body = _push(int(time.time()))
    first = _github_post(client, gh["id"], body, "d-1")
    assert first.status_code == 200 and len(first.json["events"]) == 1, first.json
    # GitHub's own redelivery keeps its id: answered as a duplicate, as before.
    again = _github_post(client, gh["id"], body, "d-1")
    assert again.status_code == 200 and again.json["duplicate"] is True
    replay = _github_post(client, gh["id"], body, "d-2-fresh-id")
    assert replay.status_code == 409, replay.json
    # A payload whose own timestamp is older than the window is refused outright.
    stale = _github_post(client, gh["id"], _push(int(time.time()) - 7200), "d-3")
    assert stale.status_code == 401 and "replay window" in stale.json["detail"]
    logs = api.get(f"/api/v1/logs?integration_id={gh['id']}").json["items"]
    # Rejections are counted into one row per interval, which a worker writes later.
    assert [log["status"] for log in logs] == ["success"]
    # Configurable: 0 turns both checks off.
    config = {"webhook_secret": "s" * 24, "replay_window_seconds": 0}
    assert api.patch(f"/api/v1/integrations/{gh['id']}", json={"config": config}).status_code == 200
    assert _github_post(client, gh["id"], body, "d-4").status_code == 200
    assert _github_post(client, gh["id"], _push(int(time.time()) - 7200), "d-5").status_code == 200
