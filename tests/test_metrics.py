"""``GET /metrics``: exact counts across gunicorn workers and RQ workers, protection, labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app.metrics.instruments import OTHER, BoundedLabel, oauth_refresh
from tests.conftest import ApiClient, make_key
from tests.peers import GunicornServer, WorkerProcess


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counts_add_up_across_gunicorn_and_rq_workers(
    app: Any,
    admin_key: str,
    integration: dict[str, Any],
    api: ApiClient,
    receiver: Any,
    tmp_path: Path,
) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    server = GunicornServer(app, tmp_path / "gunicorn.log", workers=2, **env)
    worker = WorkerProcess(app, **env)
    try:
        base = server.start()
        assert len(server.worker_pids()) == 2
        auth = {"Authorization": f"Bearer {admin_key}"}
        for _ in range(37):  # new connections: both workers take some
            assert requests.get(f"{base}/api/v1/auth/whoami", headers=auth, timeout=10).ok
        for _ in range(5):
            assert requests.get(f"{base}/api/v1/nowhere/{_}", timeout=10).status_code == 404
        assert api.post("/api/v1/event-types", json={"name": "order.paid"}).status_code == 201
        hook = {"url": receiver.url, "events": ["order.paid"], "integration_id": integration["id"]}
        assert requests.post(f"{base}/api/v1/webhooks", json=hook, headers=auth, timeout=10).ok
        for n in range(3):
            res = requests.post(
                f"{base}/api/v1/events",
                json={"type": "order.paid", "data": {"n": n}},
                headers=auth,
                timeout=10,
            )
            assert res.status_code == 202
        receiver.wait_for(lambda reqs: len(reqs) == 3)
        found = {}
        for _ in range(50):  # the worker records right after the receiver answered
            res = requests.get(f"{base}/metrics", timeout=10)  # from 127.0.0.1: no key needed
            assert res.status_code == 200 and res.headers["Content-Type"].startswith("text/plain")
            found = samples(res.text)
            if (
                value(
                    found,
                    "switchboard_delivery_attempts_total",
                    target="webhook",
                    outcome="succeeded",
                )
                == 3
            ):
                break
        whoami = {"route": "/api/v1/auth/whoami", "method": "GET", "status": "200"}
        assert value(found, "switchboard_http_requests_total", **whoami) == 37
        assert (
            value(
                found,
                "switchboard_http_request_duration_seconds_count",
                route="/api/v1/auth/whoami",
                method="GET",
            )
            == 37
        )
        assert (
            value(
                found,
                "switchboard_http_requests_total",
                route="unmatched",
                method="GET",
                status="404",
            )
            == 5
        )  # raw paths never become labels
        assert (
            value(
                found, "switchboard_delivery_attempts_total", target="webhook", outcome="succeeded"
            )
            == 3
        )
        assert value(found, "switchboard_delivery_latency_seconds_count", target="webhook") == 3
        assert ("switchboard_queue_depth", (("queue", "webhooks"),)) in found
        assert value(found, "switchboard_deliveries_due") == 0
        assert value(found, "switchboard_oldest_due_delivery_age_seconds") == 0
        assert not any("nowhere" in str(key) for key in found)
    finally:
        worker.stop()
        server.stop()


def test_metrics_need_an_allowed_network_or_an_operator_s_scope(
    client: Any,
    app: Any,
    admin_user: Any,
    operator_user: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert client.get("/metrics").status_code == 200  # the test client is 127.0.0.1
    monkeypatch.setitem(app.config, "METRICS_ALLOWED_NETWORKS", ())
    res = client.get("/metrics")
    assert res.status_code == 401 and res.mimetype == "application/problem+json"
    other = ApiClient(client, make_key(app, operator_user, ["logs:read"], platform=True))
    assert other.get("/metrics").status_code == 403
    # A tenant's own key never reads them: they cover every tenant.
    tenant_admin = ApiClient(client, make_key(app, admin_user, ["metrics:read"]))
    assert tenant_admin.get("/metrics").status_code == 403
    scraper = ApiClient(client, make_key(app, operator_user, ["metrics:read"], platform=True))
    res = scraper.get("/metrics")
    assert res.status_code == 200 and b"switchboard_http_requests_total" in res.data


def test_rate_limits_gateway_connector_runs_and_oauth_are_counted(
    api: ApiClient, app: Any, admin_user: Any, client: Any, receiver: Any
) -> None:
    from app.connectors.runtime import run_handler
    from app.connectors.testing import PluginHarness

    limited = ApiClient(
        client, make_key(app, admin_user, ["logs:read"], name="tight", rate_limit=1)
    )
    res = api.post(
        "/api/v1/integrations",
        json={
            "name": "backend",
            "type": "api",
            "provider": "rest",
            "status": "active",
            "config": {"upstreams": [{"url": receiver.url}], "timeout_ms": 3000},
        },
    )
    assert res.status_code == 201, res.json
    backend = res.json["id"]
    before = samples(client.get("/metrics").text)
    assert [limited.get("/api/v1/logs").status_code for _ in range(3)] == [200, 429, 429]
    assert api.get(f"/api/v1/gateway/{backend}/items").status_code == 200
    with PluginHarness("slack") as harness:
        slack, ctx = harness.connector(), harness.context()
        run_handler(slack, "send_message", {"webhook_url": "http://127.0.0.1:9/x"}, {}, ctx)
        run_handler(slack, "no_such_action", {}, {}, ctx)
    oauth_refresh(success=False)
    after = samples(client.get("/metrics").text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    key_id = next(
        k["id"] for k in api.get("/api/v1/api-keys").json["items"] if k["name"] == "tight"
    )
    assert delta("switchboard_rate_limited_requests_total", key=key_id) == 2
    gateway = {"integration": backend, "upstream": receiver.url}
    assert delta("switchboard_gateway_requests_total", status="200", **gateway) == 1
    assert delta("switchboard_gateway_upstream_latency_seconds_count", **gateway) == 1
    assert (
        delta(
            "switchboard_connector_actions_total",
            connector="slack",
            action="send_message",
            outcome="error",
        )
        == 1
    )  # invalid input: no text
    assert (
        delta(
            "switchboard_connector_actions_total",
            connector="slack",
            action="unknown",
            outcome="error",
        )
        == 1
    )
    assert delta("switchboard_oauth_refreshes_total", outcome="failure") == 1


def test_labels_from_configured_things_are_capped() -> None:
    label = BoundedLabel(limit=2)
    assert [label(v) for v in ("a", "b", "c", "a", None)] == ["a", "b", OTHER, "a", "none"]
