"""Integrations CRUD, filters, pagination, logs and the audit log through the HTTP API."""

from __future__ import annotations

from app.store.db import database
from app.store.models import DEFAULT_TENANT_ID, IntegrationLog

INTS = "/api/v1/integrations"


GITHUB = {"type": "webhook", "provider": "github", "config": {"webhook_secret": "s" * 24}}
REST = {"type": "api", "provider": "rest", "config": {"upstreams": [{"url": "http://127.0.0.1:9"}]}}


def _create(api, **overrides):
    body = {"name": "Deploys", **GITHUB, **overrides}
    res = api.post(INTS, json=body)
    assert res.status_code == 201, res.json
    return res.json


def test_crud_roundtrip(api):
    created = _create(api, description="ops", metadata={"team": "infra"})
    assert created["id"].startswith("int_") and created["status"] == "inactive"
    assert created["created_at"].endswith("Z")
    got = api.get(f"{INTS}/{created['id']}").json
    assert got["metadata"] == {"team": "infra"}
    patched = api.patch(
        f"{INTS}/{created['id']}", json={"description": "platform", "status": "active"}
    )
    assert patched.status_code == 200
    assert patched.json["description"] == "platform" and patched.json["name"] == "Deploys"
    assert api.delete(f"{INTS}/{created['id']}").status_code == 204
    assert api.get(f"{INTS}/{created['id']}").status_code == 404
    assert api.delete(f"{INTS}/{created['id']}").status_code == 404


def test_filters_search_and_pagination(api):
    for i in range(25):
        _create(api, name=f"alpha-{i:02d}", **(REST if i % 2 else GITHUB))
    _create(api, name="Beta hooks", status="active", provider="github")
    page = api.get(f"{INTS}?limit=10&offset=0").json
    assert page["total"] == 26 and len(page["items"]) == 10
    page3 = api.get(f"{INTS}?limit=10&offset=20").json
    assert len(page3["items"]) == 6 and page3["total"] == 26
    past = api.get(f"{INTS}?limit=10&offset=40&type=api").json  # no row to carry the total
    assert past["items"] == [] and past["total"] == 12
    filtered = api.get(f"{INTS}?limit=5&offset=10&type=api").json
    assert len(filtered["items"]) == 2 and filtered["total"] == 12
    assert "_page_total" not in filtered["items"][0]
    ids = {i["id"] for i in page["items"]} | {i["id"] for i in page3["items"]}
    assert len(ids) == 16
    assert api.get(f"{INTS}?type=api").json["total"] == 12
    assert api.get(f"{INTS}?provider=github").json["total"] == 14
    assert api.get(f"{INTS}?status=active").json["total"] == 1
    assert api.get(f"{INTS}?q=beta").json["items"][0]["name"] == "Beta hooks"
    bad = api.get(f"{INTS}?limit=0&type=bogus")
    assert bad.status_code == 422 and {"limit", "type"} <= set(bad.json["errors"])


def test_validation_names_the_field(api):
    res = api.post(INTS, json={"name": "x", "type": "carrier-pigeon", "provider": "github"})
    assert res.status_code == 422
    assert res.content_type == "application/problem+json"
    assert "type" in res.json["errors"]
    assert res.json["type"].endswith("/validation-error") and res.json["status"] == 422
    res = api.post(INTS, json={"type": "api", "config": "not-an-object"})
    assert {"name", "provider", "config"} <= set(res.json["errors"])
    assert api.get(f"{INTS}").json["total"] == 0  # nothing half-written


def test_logs_endpoints(app, api):
    created = _create(api)
    other = _create(api, name="other")
    with app.app_context(), database.connection_context():
        for i in range(3):
            IntegrationLog.create(
                tenant_id=DEFAULT_TENANT_ID,
                integration_id=created["id"],
                event_type="test",
                status="success",
                event_data={"i": i},
            )
        IntegrationLog.create(
            tenant_id=DEFAULT_TENANT_ID,
            integration_id=other["id"],
            event_type="test",
            status="error",
        )
    logs = api.get(f"/api/v1/logs?integration_id={created['id']}&limit=2&count=true").json
    assert logs["total"] == 3 and len(logs["items"]) == 2
    assert logs["items"][0]["event_data"] == {"i": 2}  # newest first
    nested = api.get(f"{INTS}/{created['id']}/logs?count=true").json
    assert nested["total"] == 3
    assert api.get("/api/v1/logs?status=error&count=true").json["total"] == 1
    assert api.get(f"{INTS}/int_missing/logs").status_code == 404


def test_audit_log_records_mutations_without_secrets(api):
    created = _create(api)
    api.patch(f"{INTS}/{created['id']}", json={"name": "Renamed"})
    api.delete(f"{INTS}/{created['id']}")
    key = api.post("/api/v1/api-keys", json={"name": "k"}).json
    entries = api.get("/api/v1/audit-log?resource_type=integration").json["items"]
    actions = [e["action"] for e in entries]
    assert actions == ["integration.deleted", "integration.updated", "integration.created"]
    assert entries[1]["changes"] == {"name": "Renamed"}
    assert all(e["actor_key_id"] and e["request_id"] and e["ip"] == "127.0.0.1" for e in entries)
    everything = api.get("/api/v1/audit-log?limit=200").text
    assert key["key"] not in everything
    assert api.get("/api/v1/audit-log?action=api_key.created&count=true").json["total"] == 1
