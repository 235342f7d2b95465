"""Alert rules: the API, every condition, cooldown, notices, and two real workers firing once."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from app.alerts.evaluate import evaluate_alerts
from app.config import SETTINGS
from app.limits.enforce import usage_buffer
from app.store.db import database
from app.store.models import (
    DEFAULT_TENANT_ID,
    AlertFiring,
    AlertNotification,
    Delivery,
    Event,
    Integration,
    IntegrationLog,
    Webhook,
)
from tests.conftest import ApiClient
from tests.peers import Receiver, WorkerProcess


def slack_peer() -> Receiver:
    """A Slack Web API on 127.0.0.1: chat.postMessage answers ok."""
    return Receiver(
        lambda req, n: (
            200,
            {"Content-Type": "application/json"},
            json.dumps({"ok": True, "channel": "C1", "ts": f"{n}.0"}).encode(),
        )
    )


def slack_integration(api: ApiClient, peer: Receiver) -> str:
    res = api.post(
        "/api/v1/integrations",
        json={
            "name": "alerts channel",
            "type": "notification",
            "provider": "slack",
            "status": "active",
            "config": {"bot_token": "xoxb-test", "channel": "#alerts", "api_base_url": peer.url},
        },
    )
    assert res.status_code == 201, res.json
    return str(res.json["id"])


def make_rule(api: ApiClient, condition: dict[str, Any], target: dict[str, Any], **kw: Any) -> str:
    res = api.post(
        "/api/v1/alert-rules",
        json={"name": kw.pop("name", "rule"), "condition": condition, "target": target, **kw},
    )
    assert res.status_code == 201, res.json
    return str(res.json["id"])


def evaluate(app: Any) -> None:
    with app.app_context(), database.connection_context():
        evaluate_alerts()


def firings(api: ApiClient, rule_id: str) -> list[dict[str, Any]]:
    res = api.get(f"/api/v1/alert-rules/{rule_id}/firings")
    assert res.status_code == 200
    return list(res.json["items"])


def alert_events(app: Any) -> list[tuple[str, dict[str, Any]]]:
    with app.app_context(), database.connection_context():
        rows = Event.select().where(Event.type.startswith("alert.")).order_by(Event.created_at)
        return [(row.type, row.payload) for row in rows]


WEBHOOK = {"type": "webhook"}


# --- the API ------------------------------------------------------------------------------


def test_rules_are_validated_and_managed(api: ApiClient, integration: dict[str, Any]) -> None:
    bad = [
        ({"type": "nope"}, WEBHOOK, "condition"),
        ({"type": "error_rate", "integration_id": integration["id"]}, WEBHOOK, "condition"),
        (
            {"type": "error_rate", "integration_id": "int_x", "threshold_percent": 5},
            WEBHOOK,
            "condition",
        ),
        ({"type": "webhook_disabled", "extra": 1}, WEBHOOK, "condition"),
        ({"type": "webhook_disabled"}, {"type": "email"}, "target"),
        (
            {"type": "webhook_disabled"},
            {"type": "action", "integration_id": "int_x", "action": "send_message"},
            "target",
        ),
        (
            {"type": "webhook_disabled"},
            {"type": "action", "integration_id": integration["id"], "action": "send_message"},
            "target",
        ),
    ]
    for condition, target, field in bad:
        res = api.post(
            "/api/v1/alert-rules", json={"name": "x", "condition": condition, "target": target}
        )
        assert res.status_code == 422, (condition, target, res.json)
        assert res.mimetype == "application/problem+json" and field in res.json["errors"]
    rule_id = make_rule(api, {"type": "connector_job_failed"}, WEBHOOK, name="jobs")
    rule = api.get(f"/api/v1/alert-rules/{rule_id}").json
    assert rule["condition"] == {
        "type": "connector_job_failed",
        "threshold": 3,
        "window_seconds": 300,
    }  # defaults are stored, so the rule says what it watches
    assert rule["cooldown_seconds"] == 300 and rule["notify_resolved"] is True
    listed = api.get("/api/v1/alert-rules?condition_type=connector_job_failed").json
    assert [r["id"] for r in listed["items"]] == [rule_id]
    assert api.get("/api/v1/alert-rules?condition_type=rate_limited").json["total"] == 0
    res = api.patch(f"/api/v1/alert-rules/{rule_id}", json={"enabled": False})
    assert res.status_code == 200 and res.json["enabled"] is False
    assert api.delete(f"/api/v1/alert-rules/{rule_id}").status_code == 204
    assert api.get(f"/api/v1/alert-rules/{rule_id}").status_code == 404


def test_alert_scopes(client: Any, app: Any, admin_user: Any) -> None:
    from tests.conftest import make_key

    reader = ApiClient(client, make_key(app, admin_user, ["alerts:read"]))
    assert reader.get("/api/v1/alert-rules").status_code == 200
    res = reader.post(
        "/api/v1/alert-rules",
        json={"name": "x", "condition": {"type": "webhook_disabled"}, "target": WEBHOOK},
    )
    assert res.status_code == 403


# --- conditions, fired and resolved in-process (the evaluator's pass, as a worker runs it) ---


def test_integration_test_failure_fires_and_resolves_with_webhook_events(
    api: ApiClient, app: Any, integration: dict[str, Any]
) -> None:
    rule_id = make_rule(api, {"type": "integration_test_failed"}, WEBHOOK, name="tests")
    with app.app_context(), database.connection_context():
        Integration.update(status="error").where(Integration.id == integration["id"]).execute()
    evaluate(app)
    evaluate(app)  # still failing: no second firing
    [firing] = firings(api, rule_id)
    assert firing["status"] == "firing" and firing["subject"] == f"integration:{integration['id']}"
    assert [n["status"] for n in firing["notifications"]] == ["sent"]
    with app.app_context(), database.connection_context():
        Integration.update(status="active").where(Integration.id == integration["id"]).execute()
    evaluate(app)
    [firing] = firings(api, rule_id)
    assert firing["status"] == "resolved" and firing["resolved_at"]
    events = alert_events(app)
    assert [kind for kind, _ in events] == ["alert.fired", "alert.resolved"]
    assert events[0][1]["rule_id"] == rule_id and "failed" in events[0][1]["summary"]
    assert events[1][1]["text"].startswith("[Switchboard] RESOLVED tests:")


def _logs(app: Any, integration_id: str, rows: list[tuple[str, str, dict[str, Any]]]) -> None:
    with app.app_context(), database.connection_context():
        for event_type, status, data in rows:
            IntegrationLog.create(
                tenant_id=DEFAULT_TENANT_ID,
                integration_id=integration_id,
                event_type=event_type,
                status=status,
                event_data=data,
            )


def test_connector_job_failures_in_a_window(
    api: ApiClient, app: Any, integration: dict[str, Any]
) -> None:
    rule_id = make_rule(api, {"type": "connector_job_failed", "threshold": 3}, WEBHOOK)
    _logs(app, integration["id"], [("action.send_message", "error", {})] * 2)
    _logs(app, integration["id"], [("action.send_message", "pending", {})] * 5)  # will retry
    evaluate(app)
    assert firings(api, rule_id) == []
    _logs(app, integration["id"], [("action.send_message", "error", {})])
    evaluate(app)
    [firing] = firings(api, rule_id)
    assert firing["subject"] == f"integration:{integration['id']}:action:send_message"
    assert firing["details"]["failed"] == 3


def test_error_rate_of_an_integration_and_of_one_upstream(
    api: ApiClient, app: Any, integration: dict[str, Any]
) -> None:
    whole = make_rule(
        api,
        {
            "type": "error_rate",
            "integration_id": integration["id"],
            "threshold_percent": 50,
            "min_requests": 4,
        },
        WEBHOOK,
    )
    upstream = make_rule(
        api,
        {
            "type": "error_rate",
            "integration_id": integration["id"],
            "threshold_percent": 50,
            "min_requests": 2,
            "upstream": "http://10.0.0.2:8080",
        },
        WEBHOOK,
    )
    good = {"upstream": "http://10.0.0.1:8080"}
    bad = {"upstream": "http://10.0.0.2:8080"}
    _logs(app, integration["id"], [("gateway.request", "success", good)] * 3)
    _logs(app, integration["id"], [("gateway.request", "error", bad)] * 2)
    evaluate(app)
    assert firings(api, whole) == []  # 2 of 5 = 40 %
    [firing] = firings(api, upstream)
    assert firing["subject"] == f"upstream:{integration['id']}:http://10.0.0.2:8080"
    assert firing["details"]["error_percent"] == 100.0
    _logs(app, integration["id"], [("gateway.request", "error", good)] * 2)
    evaluate(app)
    assert firings(api, whole)[0]["details"]["error_percent"] == pytest.approx(57.14, abs=0.01)


def test_keys_hitting_their_rate_limit(api: ApiClient, app: Any, admin_user: Any) -> None:
    from tests.conftest import make_key

    rule_id = make_rule(api, {"type": "rate_limited", "threshold": 2}, WEBHOOK)
    limited = ApiClient(api.client, make_key(app, admin_user, ["logs:read"], rate_limit=1))
    statuses = [limited.get("/api/v1/logs").status_code for _ in range(3)]
    assert statuses == [200, 429, 429]
    usage_buffer(app).flush()
    evaluate(app)
    [firing] = firings(api, rule_id)
    assert firing["subject"].startswith("key:key_") and firing["details"]["rate_limited"] == 2


def test_exhausted_deliveries_and_oauth_refresh_failures(
    api: ApiClient, app: Any, integration: dict[str, Any]
) -> None:
    exhausted = make_rule(api, {"type": "delivery_exhausted"}, WEBHOOK)
    oauth = make_rule(api, {"type": "oauth_refresh_failed"}, WEBHOOK)
    with app.app_context(), database.connection_context(), database.atomic():
        hook = Webhook.create(
            tenant_id=DEFAULT_TENANT_ID,
            url="http://127.0.0.1:9/x",
            integration=integration["id"],
            secret="x",
        )
        event = Event.create(tenant_id=DEFAULT_TENANT_ID, type="order.paid", payload={})
        Delivery.create(
            tenant_id=DEFAULT_TENANT_ID,
            event=event.id,
            webhook=hook.id,
            status="failed",
            attempts=4,
        )
        # What the OAuth2 connections' refresher emits when a provider refuses a refresh.
        from app.events.catalog import emit_event

        emit_event(
            "oauth.refresh_failed",
            {"integration_id": integration["id"], "error": "x"},
            tenant_id=DEFAULT_TENANT_ID,
        )
    evaluate(app)
    assert firings(api, exhausted)[0]["subject"] == f"webhook:{hook.id}"
    assert firings(api, oauth)[0]["subject"] == f"integration:{integration['id']}"


def test_cooldown_keeps_a_flapping_subject_quiet(
    api: ApiClient, app: Any, integration: dict[str, Any]
) -> None:
    quiet = make_rule(api, {"type": "integration_test_failed"}, WEBHOOK, cooldown_seconds=3600)
    eager = make_rule(api, {"type": "integration_test_failed"}, WEBHOOK, cooldown_seconds=0)
    for status in ("error", "active", "error"):
        with app.app_context(), database.connection_context():
            Integration.update(status=status).where(Integration.id == integration["id"]).execute()
        evaluate(app)
    assert [f["status"] for f in firings(api, quiet)] == ["resolved"]
    assert [f["status"] for f in firings(api, eager)] == ["firing", "resolved"]


def test_concurrent_evaluations_fire_once(
    api: ApiClient, app: Any, integration: dict[str, Any]
) -> None:
    rule_id = make_rule(api, {"type": "integration_test_failed"}, WEBHOOK)
    with app.app_context(), database.connection_context():
        Integration.update(status="error").where(Integration.id == integration["id"]).execute()
    start = threading.Barrier(4)

    def run() -> None:
        start.wait()
        evaluate(app)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(firings(api, rule_id)) == 1
    assert [kind for kind, _ in alert_events(app)] == ["alert.fired"]


def test_a_failed_notice_is_retried(api: ApiClient, app: Any, integration: dict[str, Any]) -> None:
    ok = (200, {"Content-Type": "application/json"}, b'{"ok": true, "ts": "1"}')
    peer = Receiver(lambda req, n: (503, {}, b"busy") if n == 1 else ok)
    try:
        slack = slack_integration(api, peer)
        rule_id = make_rule(
            api,
            {"type": "integration_test_failed", "integration_id": integration["id"]},
            {
                "type": "action",
                "integration_id": slack,
                "action": "send_message",
                "input": {"text": "{{alert.summary}} ({{alert.subject}})"},
            },
        )
        with app.app_context(), database.connection_context():
            Integration.update(status="error").where(Integration.id == integration["id"]).execute()
        evaluate(app)
        [notice] = firings(api, rule_id)[0]["notifications"]
        assert notice["status"] == "pending" and notice["attempts"] == 1
        assert "503" in notice["last_error"]
        time.sleep(0.5)  # the test retry schedule's first step is 0.2 s
        evaluate(app)
        [notice] = firings(api, rule_id)[0]["notifications"]
        assert notice["status"] == "sent" and notice["attempts"] == 2
        sent = json.loads(peer.requests[-1].body)
        summary = "The test of integration 'gh' (github) failed"
        assert sent == {
            "text": f"{summary} (integration:{integration['id']})",
            "channel": "#alerts",
        }
    finally:
        peer.close()


# --- two real workers, a real failing endpoint, a real Slack-speaking peer -----------------


def _disable_after_value() -> str:
    """The shortest auto-disable setting, whether it counts failures or measures a duration."""
    setting = next(s for s in SETTINGS if s.env == "SWITCHBOARD_WEBHOOK_DISABLE_AFTER")
    for candidate in ("1s", "1"):
        try:
            setting.parse(candidate)
            return candidate
        except ValueError:
            continue
    raise AssertionError("no short auto-disable setting accepted")


@pytest.mark.slow
def test_auto_disabled_webhook_alerts_slack_exactly_once_with_two_workers(
    api: ApiClient, app: Any, integration: dict[str, Any]
) -> None:
    slack = slack_peer()
    failing = Receiver(lambda req, n: (500, {}, b"down"))
    env = {
        "SWITCHBOARD_ALERT_INTERVAL": "0.3",
        "SWITCHBOARD_WEBHOOK_DISABLE_AFTER": _disable_after_value(),
    }
    workers = [WorkerProcess(app, **env), WorkerProcess(app, **env)]
    try:
        slack_id = slack_integration(api, slack)
        rule_id = make_rule(
            api,
            {"type": "webhook_disabled"},
            {"type": "action", "integration_id": slack_id, "action": "send_message"},
            name="webhook down",
        )
        assert api.post("/api/v1/event-types", json={"name": "order.paid"}).status_code == 201
        hook = api.post(
            "/api/v1/webhooks",
            json={
                "url": failing.url,
                "events": ["order.paid"],
                "retry_count": 0,
                "integration_id": integration["id"],
            },
        ).json
        deadline = time.monotonic() + 30
        while api.get(f"/api/v1/webhooks/{hook['id']}").json["status"] != "disabled":
            assert time.monotonic() < deadline, "the webhook was never disabled"
            api.post("/api/v1/events", json={"type": "order.paid", "data": {}})
            time.sleep(0.3)
        fired = slack.wait_for(lambda reqs: len(reqs) >= 1, timeout=20)
        time.sleep(3)  # ten evaluation intervals of each worker: nothing more may arrive
        assert len(slack.requests) == 1, [r.body for r in slack.requests]
        message = json.loads(fired[0].body)
        assert message["channel"] == "#alerts"
        assert message["text"].startswith("[Switchboard] ALERT webhook down: Webhook ")
        assert failing.url in message["text"]
        assert fired[0].headers["authorization"] == "Bearer xoxb-test"

        assert (
            api.patch(f"/api/v1/webhooks/{hook['id']}", json={"status": "active"}).status_code
            == 200
        )
        resolved = slack.wait_for(lambda reqs: len(reqs) >= 2, timeout=20)
        time.sleep(3)
        assert len(slack.requests) == 2
        assert json.loads(resolved[1].body)["text"].startswith(
            "[Switchboard] RESOLVED webhook down"
        )
        history = firings(api, rule_id)
        assert len(history) == 1 and history[0]["subject"] == f"webhook:{hook['id']}"
        assert [(n["phase"], n["status"]) for n in history[0]["notifications"]] == [
            ("fired", "sent"),
            ("resolved", "sent"),
        ]
        with app.app_context(), database.connection_context():
            assert AlertFiring.select().count() == 1
            assert AlertNotification.select().where(AlertNotification.status == "sent").count() == 2
    finally:
        for worker in workers:
            worker.stop()
        slack.close()
        failing.close()
