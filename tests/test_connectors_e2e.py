"""Connectors through the HTTP API and real workers: catalog, config secrets, tests, actions,
inbound GitHub → events → webhook + Slack subscription, broken plugins, a third-party package."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks

from app import create_app
from app.store.db import database
from app.store.models import DEFAULT_TENANT_ID, AuditLog, Delivery, Event, Integration
from tests.conftest import ApiClient, create_github_integration, make_key
from tests.peers import Receiver

INTS = "/api/v1/integrations"
GITHUB_SECRET = "gh-webhook-secret-0123456789"
RUN_COMPLETED = "github.workflow_run.completed"


def slack_peer(fail_first_with_429: bool = False) -> Receiver:
    """A local peer speaking Slack's Web API: auth.test and chat.postMessage."""

    def respond(req, n):
        if req.headers.get("authorization") != "Bearer xoxb-test-token":
            return (
                200,
                {"Content-Type": "application/json"},
                b'{"ok": false, "error": "invalid_auth"}',
            )
        if req.path.endswith("/auth.test"):
            return (
                200,
                {"Content-Type": "application/json"},
                b'{"ok": true, "team": "Acme", "user": "switchboard"}',
            )
        if req.path.endswith("/chat.postMessage"):
            if fail_first_with_429 and n == 1:
                return 429, {"Retry-After": "1"}, b""
            return (
                200,
                {"Content-Type": "application/json"},
                b'{"ok": true, "channel": "C123", "ts": "1700000000.1"}',
            )
        return 404, {}, b""

    return Receiver(respond)


def _slack(api, peer, **extra):
    body = {
        "name": "alerts",
        "type": "notification",
        "status": "active",
        "provider": "slack",
        "config": {
            "bot_token": "xoxb-test-token",
            "channel": "#ci",
            "api_base_url": peer.url + "/api",
            "timeout_ms": 2000,
        },
        **extra,
    }
    res = api.post(INTS, json=body)
    assert res.status_code == 201, res.json
    return res.json


def _wait_job(api, job_id, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = api.get(f"/api/v1/jobs/{job_id}").json
        if job["status"] in ("finished", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job not done: {job}")


def test_catalog_lists_builtins(api):
    res = api.get("/api/v1/connectors")
    assert res.status_code == 200
    by_name = {c["name"]: c for c in res.json["items"]}
    assert {"slack", "github", "rest"} <= set(by_name)
    slack = by_name["slack"]
    assert slack["status"] == "loaded" and slack["distribution"] == "switchboard"
    assert slack["type"] == "notification" and "send_message" in slack["actions"]
    assert slack["config_schema"]["properties"]["bot_token"]["writeOnly"] is True
    assert "github.workflow_run.completed" in by_name["github"]["event_types"]
    assert api.get("/api/v1/connectors/github").json["inbound"] is True
    assert api.get("/api/v1/connectors/nope").status_code == 404
    catalog = {e["name"]: e for e in api.get("/api/v1/event-types").json["items"]}
    assert catalog["github.push"]["source"] == "connector"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"provider": "nope", "type": "api"}, "provider"),
        ({"provider": "github", "type": "api", "config": {"webhook_secret": "x" * 20}}, "type"),
        ({"provider": "github", "type": "webhook", "config": {}}, "config.webhook_secret"),
        (
            {
                "provider": "github",
                "type": "webhook",
                "config": {"webhook_secret": "x" * 20, "extra": 1},
            },
            "config.extra",
        ),
        (
            {"provider": "rest", "type": "api", "config": {"upstreams": [{"url": "not a url"}]}},
            "config.upstreams.0.url",
        ),
        (
            {
                "provider": "rest",
                "type": "api",
                "config": {"upstreams": [{"url": "http://127.0.0.1:1", "weight": 0}]},
            },
            "config.upstreams.0.weight",
        ),
    ],
)
def test_config_validation_names_the_field(api, body, field):
    res = api.post(INTS, json={"name": "x", **body})
    assert res.status_code == 422, res.json
    assert field in res.json["errors"], res.json
    assert api.get(INTS).json["total"] == 0


def test_secrets_encrypted_redacted_and_kept(app, api, receiver):
    created = _slack(api, receiver, subscriptions=[])
    assert created["config"]["bot_token"] == "********"
    assert created["config"]["channel"] == "#ci"
    with app.app_context(), database.connection_context():
        stored = Integration.get_by_id(created["id"]).config
    assert "xoxb-test-token" not in json.dumps(stored)
    assert set(stored["bot_token"]) == {"$encrypted"}
    # A PATCH that omits or repeats the redaction keeps the secret.
    api.patch(
        f"{INTS}/{created['id']}",
        json={"config": {"channel": "#deploys", "api_base_url": receiver.url + "/api"}},
    )
    api.patch(
        f"{INTS}/{created['id']}",
        json={
            "config": {
                "bot_token": "********",
                "channel": "#deploys",
                "api_base_url": receiver.url + "/api",
            }
        },
    )
    with app.app_context(), database.connection_context():
        from app.connectors.configs import decrypt_config

        with app.test_request_context():
            plain = decrypt_config(Integration.get_by_id(created["id"]).config)
    assert plain["bot_token"] == "xoxb-test-token" and plain["channel"] == "#deploys"
    everything = " ".join(
        [
            api.get(INTS).text,
            api.get(f"{INTS}/{created['id']}").text,
            api.get("/api/v1/audit-log?limit=200").text,
            api.get("/api/v1/logs?limit=200").text,
        ]
    )
    with app.app_context(), database.connection_context():
        everything += " ".join(json.dumps(e.payload) for e in Event.select())
        everything += " ".join(json.dumps(a.changes) for a in AuditLog.select())
    assert "xoxb-test-token" not in everything


def test_integration_test_endpoint_sets_status(api):
    """A test moves an active integration to error and back; it never switches one on or off."""
    peer = slack_peer()
    try:
        good = _slack(api, peer, status="inactive")
        res = api.post(f"{INTS}/{good['id']}/test")
        assert res.status_code == 200 and res.json["success"] is True, res.json
        assert api.get(f"{INTS}/{good['id']}").json["status"] == "inactive"
        api.patch(f"{INTS}/{good['id']}", json={"status": "active"})
        assert api.post(f"{INTS}/{good['id']}/test").json["success"] is True
        assert api.get(f"{INTS}/{good['id']}").json["status"] == "active"
        bad = api.post(
            INTS,
            json={
                "name": "bad",
                "type": "notification",
                "provider": "slack",
                "status": "active",
                "config": {
                    "bot_token": "xoxb-wrong",
                    "channel": "#ci",
                    "api_base_url": peer.url + "/api",
                },
            },
        ).json
        res = api.post(f"{INTS}/{bad['id']}/test").json
        assert res["success"] is False and "invalid_auth" in res["message"]
        assert api.get(f"{INTS}/{bad['id']}").json["status"] == "error"
        logs = api.get(f"{INTS}/{bad['id']}/logs").json["items"]
        assert logs[0]["event_type"] == "integration.test" and logs[0]["status"] == "error"
        fixed = {
            "config": {
                "bot_token": "xoxb-test-token",
                "channel": "#ci",
                "api_base_url": peer.url + "/api",
            }
        }
        assert api.patch(f"{INTS}/{bad['id']}", json=fixed).status_code == 200
        assert api.post(f"{INTS}/{bad['id']}/test").json["success"] is True
        assert api.get(f"{INTS}/{bad['id']}").json["status"] == "active"
    finally:
        peer.close()


def test_action_job_runs_and_retries_after_429(api, worker):
    peer = slack_peer(fail_first_with_429=True)
    try:
        slack = _slack(api, peer)
        bad = api.post(f"{INTS}/{slack['id']}/actions/send_message", json={"blocks": "nope"})
        assert bad.status_code == 422 and "text" in bad.json["errors"]
        assert api.post(f"{INTS}/{slack['id']}/actions/explode", json={}).status_code == 404
        res = api.post(f"{INTS}/{slack['id']}/actions/send_message", json={"text": "hello"})
        assert res.status_code == 202
        job = _wait_job(api, res.json["job_id"])
        assert job["status"] == "finished", job
        assert job["result"] == {"ok": True, "channel": "C123", "ts": "1700000000.1"}
        assert job["attempts"] == 2 and job["action"] == "send_message"
        posts = [r for r in peer.requests if r.path.endswith("chat.postMessage")]
        assert len(posts) == 2 and posts[1].at - posts[0].at >= 1.0  # Retry-After: 1 is a minimum
        assert json.loads(posts[1].body)["text"] == "hello"
        logs = api.get(f"{INTS}/{slack['id']}/logs?event_type=action.send_message").json["items"]
        assert [entry["status"] for entry in logs] == ["success", "pending"]
        assert all(entry["response_time_ms"] is not None for entry in logs)
        assert api.get("/api/v1/jobs/not-a-job").status_code == 404
    finally:
        peer.close()


def _workflow_run(conclusion="failure"):
    return {
        "action": "completed",
        "workflow_run": {
            "id": 42,
            "name": "CI",
            "head_branch": "main",
            "head_sha": "abc123def",
            "status": "completed",
            "conclusion": conclusion,
            "html_url": "https://github.com/acme/shop/actions/runs/42",
            "actor": {"login": "octocat"},
            "display_title": "Fix checkout",
        },
        "repository": {"full_name": "acme/shop", "html_url": "https://github.com/acme/shop"},
        "sender": {"login": "octocat"},
    }


def _signed_post(
    client, integration_id, payload, secret=GITHUB_SECRET, delivery=None, event="workflow_run"
):
    if delivery is None:  # a new delivery is a new event: its body differs (else: a replay)
        payload = {**payload, "installation": {"id": uuid.uuid4().int % 10**9}}
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return client.post(
        f"/api/v1/inbound/{integration_id}",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "X-Hub-Signature-256": signature,
        },
    )


def test_cicd_story_end_to_end(app, api, client, receiver, worker):
    """A signed GitHub workflow_run failure reaches a webhook and makes Slack post a message."""
    peer = slack_peer()
    try:
        github = create_github_integration(api, GITHUB_SECRET)
        _slack(
            api,
            peer,
            status="active",
            subscriptions=[
                {
                    "events": ["github.workflow_run.completed"],
                    "action": "send_message",
                    "input": {
                        "text": "{{event.data.repository}}@{{event.data.branch}}: "
                        "{{event.data.conclusion}}"
                    },
                }
            ],
        )
        hook = api.post(
            "/api/v1/webhooks",
            json={
                "url": receiver.url,
                "events": ["github.workflow_run.*"],
                "integration_id": github["id"],
            },
        ).json

        # Wrong signature: 401 and nothing happens.
        with app.app_context(), database.connection_context():
            before = Event.select().count()
        wrong = _signed_post(client, github["id"], _workflow_run(), secret="not-the-secret-at-all")
        assert wrong.status_code == 401 and wrong.content_type == "application/problem+json"
        with app.app_context(), database.connection_context():
            assert Event.select().count() == before

        delivery = str(uuid.uuid4())
        ok = _signed_post(client, github["id"], _workflow_run(), delivery=delivery)
        assert ok.status_code == 200, ok.json
        [event_id] = ok.json["events"]
        again = _signed_post(client, github["id"], _workflow_run(), delivery=delivery)
        assert again.status_code == 200 and again.json["duplicate"] is True

        got = receiver.wait_for(lambda r: len(r) >= 1)
        payload = standardwebhooks.Webhook(hook["secret"]).verify(got[0].body, got[0].headers)
        assert payload["type"] == "github.workflow_run.completed"
        data = payload["data"]
        assert data["repository"] == "acme/shop" and data["branch"] == "main"
        assert data["conclusion"] == "failure" and data["commit"] == "abc123def"
        assert data["actor"] == "octocat" and data["url"].endswith("/runs/42")
        assert got[0].headers["webhook-id"] == event_id

        posts = peer.wait_for(lambda r: any(x.path.endswith("chat.postMessage") for x in r))
        message = json.loads(next(x for x in posts if x.path.endswith("chat.postMessage")).body)
        assert message == {"text": "acme/shop@main: failure", "channel": "#ci"}
        time.sleep(1.0)
        assert len(receiver.requests) == 1  # the duplicate delivery produced nothing
        assert len([x for x in peer.requests if x.path.endswith("chat.postMessage")]) == 1
    finally:
        peer.close()


def test_inbound_ping_allowed_ips_and_unknown(api, client):
    github = create_github_integration(api, GITHUB_SECRET)
    ping = _signed_post(
        client, github["id"], {"zen": "Keep it logically awesome.", "hook_id": 1}, event="ping"
    )
    assert ping.status_code == 200 and ping.json["zen"] == "Keep it logically awesome."
    api.patch(f"{INTS}/{github['id']}", json={"allowed_ips": ["192.30.252.0/22"]})
    blocked = _signed_post(client, github["id"], _workflow_run())
    assert blocked.status_code == 403
    assert client.post("/api/v1/inbound/int_missing", data=b"{}").status_code == 404


def test_broken_plugins_do_not_stop_the_app(app, api, client, admin_user):
    registry = app.extensions["plugins"]

    from app import hookimpl

    class RaisingPlugin:
        @staticmethod
        @hookimpl
        def register_connectors():
            raise RuntimeError("boom")

    registry.register(RaisingPlugin, "raising")
    try:
        items = {c["name"]: c for c in api.get("/api/v1/connectors").json["items"]}
        assert items["raising"]["status"] == "error" and "boom" in items["raising"]["error"]
        assert items["slack"]["status"] == "loaded"
        assert api.get(INTS).status_code == 200
        # Load errors are read with the integrations' scope, not by any key.
        publisher = ApiClient(client, make_key(app, admin_user, ["events:write"]))
        for path in ("/api/v1/connectors", "/api/v1/connectors/raising"):
            refused = publisher.get(path)
            assert refused.status_code == 403 and "integrations:read" in refused.json["detail"]
        reader = ApiClient(client, make_key(app, admin_user, ["integrations:read"]))
        assert reader.get("/api/v1/connectors/raising").json["status"] == "error"
    finally:
        registry.unregister("raising")
    # An entry point that fails to import: the app still starts and lists it.
    from importlib.metadata import EntryPoint

    broken = create_app({**app.config})
    broken.extensions["plugins"].load_entry_points(
        allow=None,
        entry_points=[EntryPoint("ghost", "no_such_module_xyz", "switchboard.connectors")],
    )
    status = {s.name: s for s in broken.extensions["plugins"].statuses()}
    assert status["ghost"].status == "error" and status["slack"].status == "loaded"


@pytest.fixture(scope="session")
def example_site(tmp_path_factory):
    """The third-party example connector installed (as its own distribution) into a directory
    of this session's, never into the virtualenv: nothing outlives the tests."""
    site = tmp_path_factory.mktemp("example-site")
    source = tmp_path_factory.mktemp("example-source") / "example_connector"
    # A copy: building in place would leave build/ and *.egg-info in the repository.
    shutil.copytree(
        Path(__file__).parent / "example_connector",
        source,
        ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
        + ["--target", str(site), str(source)],
        check=True,
    )
    return site


@pytest.fixture()
def example_installed(example_site, monkeypatch):
    """The example connector importable by this test's apps and the processes they start."""
    monkeypatch.syspath_prepend(str(example_site))
    paths = [str(example_site), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    yield
    sys.modules.pop("switchboard_example", None)


@pytest.mark.slow
def test_third_party_package_end_to_end(app, admin_key, example_installed, worker):
    from tests.conftest import ApiClient

    fresh = create_app({**app.config})  # entry points are read when the app starts
    api = ApiClient(fresh.test_client(), admin_key)
    listed = {c["name"]: c for c in api.get("/api/v1/connectors").json["items"]}
    example = listed["example"]
    assert example["status"] == "loaded"
    assert example["distribution"] == "switchboard-example-connector"
    created = api.post(
        INTS,
        json={
            "name": "echo",
            "type": "api",
            "provider": "example",
            "status": "active",
            "config": {"greeting": "Hello", "api_token": "tok-secret-123"},
        },
    )
    assert created.status_code == 201, created.json
    integration = created.json
    assert integration["config"]["api_token"] == "********"
    assert api.post(f"{INTS}/{integration['id']}/test").json["success"] is True
    job_id = api.post(f"{INTS}/{integration['id']}/actions/echo", json={"message": "world"}).json[
        "job_id"
    ]
    job = _wait_job(api, job_id)
    assert job["status"] == "finished" and job["result"] == {"echo": "Hello, world"}
    logs = api.get(f"{INTS}/{integration['id']}/logs").json["items"]
    assert {entry["event_type"] for entry in logs} >= {"action.echo", "integration.test"}


@pytest.mark.slow
def test_a_broken_plugin_answers_503_and_its_subscribed_events_wait(
    app, admin_key, example_installed
):
    """A connector whose plugin fails to load: direct calls answer 503 with the load error (not
    a 422 blaming `provider`), and a subscribed event is retried until a worker with the plugin
    working runs it."""
    from importlib.metadata import EntryPoint

    from tests.conftest import ApiClient
    from tests.peers import WorkerProcess

    # Entry points are read when the app starts; attempts enough to outlast the broken worker.
    fresh = create_app({**app.config, "SUBSCRIPTION_MAX_ATTEMPTS": 50})
    api = ApiClient(fresh.test_client(), admin_key)
    assert api.post("/api/v1/event-types", json={"name": "order.shipped"}).status_code in (201, 422)
    body = {
        "name": "echo",
        "type": "api",
        "provider": "example",
        "status": "active",
        "config": {"greeting": "Hello"},
        "subscriptions": [
            {"events": ["order.shipped"], "action": "echo", "input": {"message": "shipped"}}
        ],
    }
    created = api.post(INTS, json=body)
    assert created.status_code == 201, created.json
    iid = created.json["id"]

    broken = create_app({**app.config})
    registry = broken.extensions["plugins"]
    registry.unregister("example")
    registry.load_entry_points(
        allow=None,
        entry_points=[EntryPoint("example", "switchboard_example_gone", "switchboard.connectors")],
    )
    down = ApiClient(broken.test_client(), admin_key)
    for res in (
        down.post(f"{INTS}/{iid}/test"),
        down.post(f"{INTS}/{iid}/actions/echo", json={"message": "x"}),
        down.patch(f"{INTS}/{iid}", json={"description": "x"}),
        down.post(INTS, json=body),
    ):
        assert res.status_code == 503, res.json
        assert "connector 'example' failed to load" in res.json["detail"]
        assert "switchboard_example_gone" in res.json["detail"]

    def delivery() -> Any:
        with fresh.app_context(), database.connection_context():
            return Delivery.get(Delivery.integration == iid)

    # A worker without the plugin: the event's delivery is retried, not failed.
    retry_fast = {"SWITCHBOARD_WEBHOOK_RETRY_SCHEDULE": "0.5", "SWITCHBOARD_LOG_LEVEL": "WARNING"}
    without = WorkerProcess(fresh, SWITCHBOARD_PLUGINS="github,rest,slack", **retry_fast)
    try:
        event = api.post("/api/v1/events", json={"type": "order.shipped", "data": {}})
        assert event.status_code == 202
        deadline = time.monotonic() + 60
        while (row := delivery()).attempts < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert row.attempts >= 2 and row.status == "pending", (row.status, row.last_error)
        assert "connector 'example' is not loaded" in (row.last_error or "")
    finally:
        without.stop()
    fixed = WorkerProcess(fresh, **retry_fast)
    try:
        deadline = time.monotonic() + 60
        while (row := delivery()).status != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert row.status == "succeeded", (row.status, row.last_error)
    finally:
        fixed.stop()


def test_kept_secrets_never_follow_a_changed_url(app, api, receiver):
    created = api.post(
        INTS,
        json={
            "name": "api",
            "type": "api",
            "provider": "rest",
            "config": {
                "upstreams": [{"url": receiver.url}],
                "auth": {"type": "bearer", "token": "tok-1"},
            },
        },
    ).json
    moved = api.patch(
        f"{INTS}/{created['id']}",
        json={
            "config": {
                "upstreams": [{"url": "https://attacker.example"}],
                "auth": {"type": "bearer", "token": "********"},
            }
        },
    )
    assert moved.status_code == 422 and "config.auth.token" in moved.json["errors"]
    # Same URL: the redaction keeps the token; switching auth off drops it cleanly.
    same = api.patch(
        f"{INTS}/{created['id']}",
        json={
            "config": {
                "upstreams": [{"url": receiver.url}],
                "auth": {"type": "bearer", "token": "********"},
                "timeout_ms": 2000,
            }
        },
    )
    assert same.status_code == 200 and same.json["config"]["auth"]["token"] == "********"
    off = api.patch(
        f"{INTS}/{created['id']}",
        json={"config": {"upstreams": [{"url": receiver.url}], "auth": {"type": "none"}}},
    )
    assert off.status_code == 200 and off.json["config"]["auth"] == {"type": "none"}
    switch = api.patch(f"{INTS}/{created['id']}", json={"provider": "github", "type": "webhook"})
    assert switch.status_code == 422 and "config" in switch.json["errors"]


def test_a_secret_that_is_itself_a_url_is_kept_on_update(app, api, receiver):
    """Slack's webhook_url is a secret and a URL: omitting it or sending ******** keeps it."""
    hook = receiver.url + "/services/T0/B0/xyz"
    created = api.post(
        INTS,
        json={
            "name": "hook",
            "type": "notification",
            "provider": "slack",
            "config": {"webhook_url": hook},
        },
    ).json
    omitted = api.patch(f"{INTS}/{created['id']}", json={"config": {"timeout_ms": 5000}})
    assert omitted.status_code == 200, omitted.json
    assert omitted.json["config"] == {"webhook_url": "********", "timeout_ms": 5000}
    redacted = api.patch(
        f"{INTS}/{created['id']}",
        json={"config": {"webhook_url": "********", "timeout_ms": 6000}},
    )
    assert redacted.status_code == 200, redacted.json
    with app.app_context(), database.connection_context():
        from app.connectors.configs import decrypt_config

        plain = decrypt_config(Integration.get_by_id(created["id"]).config)
    assert plain == {"webhook_url": hook, "timeout_ms": 6000}
    # A new secret URL is a new destination: the other kept secrets must come along again.
    signed = api.patch(
        f"{INTS}/{created['id']}",
        json={"config": {"webhook_url": "********", "signing_secret": "sig-1"}},
    )
    assert signed.status_code == 200, signed.json
    moved = api.patch(
        f"{INTS}/{created['id']}",
        json={"config": {"webhook_url": receiver.url + "/services/T0/B0/other"}},
    )
    assert moved.status_code == 422 and list(moved.json["errors"]) == ["config.signing_secret"]


def test_inactive_integrations_let_nothing_through(app, api, client, worker, monkeypatch):
    """One rule: `inactive` refuses inbound webhooks, actions, subscriptions (and the gateway)."""
    monkeypatch.setitem(app.config, "INBOUND_REJECTION_LOG_INTERVAL", 1)
    peer = slack_peer()
    try:
        github = create_github_integration(api, GITHUB_SECRET)
        subscription = {
            "events": ["github.workflow_run.completed"],
            "action": "send_message",
            "input": {"text": "{{event.data.conclusion}}"},
        }
        slack = _slack(api, peer, subscriptions=[subscription])
        for integration in (github, slack):
            off = api.patch(f"{INTS}/{integration['id']}", json={"status": "inactive"})
            assert off.status_code == 200 and off.json["status"] == "inactive"

        refused = _signed_post(client, github["id"], _workflow_run())
        assert refused.status_code == 409 and "inactive" in refused.json["detail"], refused.json
        action = api.post(f"{INTS}/{slack['id']}/actions/send_message", json={"text": "hi"})
        assert action.status_code == 409 and action.content_type == "application/problem+json"
        with app.app_context(), database.connection_context():
            assert Event.select().where(Event.type == RUN_COMPLETED).count() == 0
        # Rejections are logged as one row per interval (here 1 s), written by the worker.
        rejected_logs = f"{INTS}/{github['id']}/logs?event_type=inbound.rejected"
        deadline = time.monotonic() + 20
        while not (logs := api.get(rejected_logs).json["items"]):
            assert time.monotonic() < deadline, "no inbound.rejected log row"
            time.sleep(0.1)
        assert logs[0]["event_data"]["reasons"] == {"inactive": 1}
        assert "integration is inactive" in logs[0]["error_message"]

        # GitHub back on, Slack still off: the event is published, the subscription is not run.
        api.patch(f"{INTS}/{github['id']}", json={"status": "active"})
        accepted = _signed_post(client, github["id"], _workflow_run())
        assert accepted.status_code == 200, accepted.json
        with app.app_context(), database.connection_context():
            assert Event.select().where(Event.type == RUN_COMPLETED).count() == 1
        assert api.get("/api/v1/logs?event_type=action.send_message&count=true").json["total"] == 0
        assert [r.path for r in peer.requests] == []

        # Slack on: the next event runs its subscription (status `error` serves too).
        api.patch(f"{INTS}/{slack['id']}", json={"status": "error"})
        assert _signed_post(client, github["id"], _workflow_run()).status_code == 200
        posted = peer.wait_for(lambda r: any(x.path.endswith("/chat.postMessage") for x in r))
        assert json.loads(posted[-1].body)["text"] == "failure"
    finally:
        peer.close()


def test_work_queued_before_an_integration_was_switched_off_does_not_run(app, api):
    """A pending subscribed delivery or action job ends when its integration became inactive."""
    from app.connectors.jobs import ActionFailed, run_action
    from app.events.subscriptions import run_subscription
    from app.store.models import Delivery

    peer = slack_peer()
    try:
        subscription = {
            "events": [RUN_COMPLETED],
            "action": "send_message",
            "input": {"text": "{{event.data.conclusion}}"},
        }
        slack = _slack(api, peer, subscriptions=[subscription])
        with app.app_context(), database.connection_context(), database.atomic():
            from app.events.catalog import emit_event

            event = emit_event(
                RUN_COMPLETED, {"conclusion": "failure"}, tenant_id=DEFAULT_TENANT_ID
            )
        api.patch(f"{INTS}/{slack['id']}", json={"status": "inactive"})
        with app.app_context(), database.connection_context():
            delivery = Delivery.get(Delivery.integration == slack["id"])
            result = run_subscription(delivery, event)
            assert (result.success, result.final, result.error) == (
                False,
                True,
                "integration is inactive",
            )
            with pytest.raises(ActionFailed, match="is inactive"):
                run_action(slack["id"], "send_message", {"text": "hi"})
        assert peer.requests == []
    finally:
        peer.close()
