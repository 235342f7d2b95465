"""Webhook endpoints, event types and publishing through the HTTP API (no worker needed)."""

from __future__ import annotations

import base64
import json

import pytest
import standardwebhooks

from app import create_app
from app.store.db import database
from app.store.models import Delivery, Event
from tests.conftest import ApiClient, make_key

HOOKS = "/api/v1/webhooks"


def _hook(api, integration, url, **kw):
    body = {"url": url, "events": ["*"], "integration_id": integration["id"], **kw}
    return api.post(HOOKS, json=body)


def test_create_read_update_delete(api, integration, receiver):
    res = _hook(api, integration, receiver.url, events=["integration.*", "api_key.created"])
    assert res.status_code == 201, res.json
    created = res.json
    assert created["secret"].startswith("whsec_")
    raw = base64.b64decode(created["secret"][6:])
    assert 24 <= len(raw) <= 64
    got = api.get(f"{HOOKS}/{created['id']}").json
    assert "secret" not in got and created["secret"] not in json.dumps(got)
    listing = api.get(f"{HOOKS}?integration_id={integration['id']}").json
    assert listing["total"] == 1 and created["secret"] not in json.dumps(listing)
    patched = api.patch(f"{HOOKS}/{created['id']}", json={"retry_count": 5, "status": "disabled"})
    assert patched.json["retry_count"] == 5 and patched.json["status"] == "disabled"
    assert api.get(f"{HOOKS}?status=disabled").json["total"] == 1
    again = api.patch(f"{HOOKS}/{created['id']}", json={"status": "active"}).json
    assert again["status"] == "active" and again["disabled_reason"] is None
    assert api.delete(f"{HOOKS}/{created['id']}").status_code == 204
    assert api.get(f"{HOOKS}/{created['id']}").status_code == 404
    audit = api.get("/api/v1/audit-log?resource_type=webhook&limit=50").text
    assert created["secret"] not in audit


def test_custom_secret_accepted_and_weak_refused(api, integration, receiver):
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    assert _hook(api, integration, receiver.url, secret=secret).json["secret"] == secret
    weak = _hook(
        api, integration, receiver.url, secret="whsec_" + base64.b64encode(b"x" * 8).decode()
    )
    assert weak.status_code == 422 and "secret" in weak.json["errors"]


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"events": ["no.such.event"]}, "events"),
        ({"events": []}, "events"),
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"retry_count": -1}, "retry_count"),
        ({"retry_count": 1000}, "retry_count"),
        ({"timeout_ms": 10}, "timeout_ms"),
        ({"timeout_ms": 10_000_000}, "timeout_ms"),
        ({"integration_id": "int_missing"}, "integration_id"),
        ({"rate_limit_per_second": 0}, "rate_limit_per_second"),
    ],
)
def test_bad_input_names_the_field(api, integration, receiver, overrides, field):
    body = {"url": receiver.url, "events": ["*"], "integration_id": integration["id"], **overrides}
    res = api.post(HOOKS, json=body)
    assert res.status_code == 422, res.json
    assert res.content_type == "application/problem+json"
    assert field in res.json["errors"]
    assert api.get(HOOKS).json["total"] == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://127.0.0.1:9/hook",
        "http://internal.example/hook",
    ],
)
def test_ssrf_refused_at_creation(app, admin_key, integration, monkeypatch, url):
    import app.outbound.guard as http_client

    real = http_client.resolve_host
    monkeypatch.setattr(
        http_client,
        "resolve_host",
        lambda host, port: ["10.1.2.3"] if host == "internal.example" else real(host, port),
    )
    strict = create_app({**app.config, "ALLOWED_NETWORKS": ""})
    api = ApiClient(strict.test_client(), admin_key)
    res = api.post(HOOKS, json={"url": url, "events": ["*"], "integration_id": integration["id"]})
    assert res.status_code == 422, res.json
    assert "url" in res.json["errors"]


def test_event_types_catalog_and_publish(api, integration, receiver):
    catalog = api.get("/api/v1/event-types").json
    names = {i["name"] for i in catalog["items"]}
    assert {"integration.created", "webhook.disabled", "api_key.rotated"} <= names
    created = api.post(
        "/api/v1/event-types", json={"name": "order.paid", "description": "An order was paid"}
    )
    assert created.status_code == 201
    assert api.post("/api/v1/event-types", json={"name": "order.paid"}).status_code == 409
    squat = api.post("/api/v1/event-types", json={"name": "github.pull_request.merged"})
    assert squat.status_code == 422 and "name" in squat.json["errors"]
    assert api.post("/api/v1/event-types", json={"name": "webhook.spoof"}).status_code == 422
    bad = api.post("/api/v1/event-types", json={"name": "Not Valid"})
    assert bad.status_code == 422 and "name" in bad.json["errors"]
    entry = next(
        i for i in api.get("/api/v1/event-types").json["items"] if i["name"] == "order.paid"
    )
    assert entry == {
        "name": "order.paid",
        "description": "An order was paid",
        "source": "custom",
        "schema": None,
        "examples": [],
    }

    _hook(api, integration, receiver.url, events=["order.*"])
    res = api.post("/api/v1/events", json={"type": "order.paid", "data": {"order": 42}})
    assert (
        res.status_code == 202 and res.json["id"].startswith("msg_") and res.json["deliveries"] == 1
    )
    unknown = api.post("/api/v1/events", json={"type": "order.refunded", "data": {}})
    assert unknown.status_code == 422 and "type" in unknown.json["errors"]
    reserved = api.post("/api/v1/events", json={"type": "api_key.revoked", "data": {}})
    assert reserved.status_code == 422
    assert "reserved (builtin)" in reserved.json["errors"]["type"][0]
    connector = api.post("/api/v1/events", json={"type": "github.push", "data": {}})
    assert connector.status_code == 422
    assert "reserved (connector)" in connector.json["errors"]["type"][0]
    big = api.post("/api/v1/events", json={"type": "order.paid", "data": {"x": "a" * (300 * 1024)}})
    assert big.status_code == 413 and big.content_type == "application/problem+json"


def test_idempotency_key(app, api, integration, receiver):
    api.post("/api/v1/event-types", json={"name": "order.paid"})
    _hook(api, integration, receiver.url, events=["order.paid"])
    headers = {"Idempotency-Key": "order-42"}
    first = api.post(
        "/api/v1/events", json={"type": "order.paid", "data": {"n": 1}}, headers=headers
    )
    second = api.post(
        "/api/v1/events", json={"type": "order.paid", "data": {"n": 1}}, headers=headers
    )
    assert first.status_code == second.status_code == 202
    assert first.json["id"] == second.json["id"] and second.json["duplicate"] is True
    other = api.post(
        "/api/v1/events",
        json={"type": "order.paid", "data": {"n": 1}},
        headers={"Idempotency-Key": "order-43"},
    )
    assert other.json["id"] != first.json["id"]
    with app.app_context(), database.connection_context():
        assert Event.select().where(Event.type == "order.paid").count() == 2
        assert Delivery.select().where(Delivery.event == first.json["id"]).count() == 1


def test_domain_changes_emit_events(app, api, integration, receiver):
    hook = _hook(api, integration, receiver.url, events=["integration.*", "api_key.*"]).json
    api.patch(f"/api/v1/integrations/{integration['id']}", json={"description": "x"})
    key = api.post("/api/v1/api-keys", json={"name": "k"}).json
    api.post(f"/api/v1/api-keys/{key['id']}/rotate", json={})
    api.delete(f"/api/v1/api-keys/{key['id']}")
    with app.app_context(), database.connection_context():
        types = [
            d.event.type
            for d in Delivery.select(Delivery, Event)
            .join(Event)
            .where(Delivery.webhook == hook["id"])
            .order_by(Event.created_at)
        ]
        payloads = " ".join(json.dumps(e.payload) for e in Event.select())
    assert types == ["integration.updated", "api_key.created", "api_key.rotated", "api_key.revoked"]
    assert key["key"] not in payloads and hook["secret"] not in payloads


def test_test_endpoint_signs_with_standard_webhooks(api, integration, receiver):
    hook = _hook(api, integration, receiver.url).json
    res = api.post(f"{HOOKS}/{hook['id']}/test")
    assert res.status_code == 200
    assert res.json["success"] is True and res.json["status_code"] == 200
    assert res.json["response_time_ms"] >= 0
    req = receiver.requests[-1]
    payload = standardwebhooks.Webhook(hook["secret"]).verify(req.body, req.headers)
    assert payload["type"] == "webhook.test"
    assert req.headers["user-agent"].startswith("Switchboard-Webhooks/")
    assert req.headers["content-type"] == "application/json"
    logs = api.get(f"/api/v1/integrations/{integration['id']}/logs").json["items"]
    assert logs[0]["event_type"] == "webhook.test" and logs[0]["status"] == "success"


def test_test_endpoint_reports_failure(api, integration):
    from tests.peers import Receiver

    failing = Receiver(lambda req, n: (503, {}, b"down"))
    try:
        hook = _hook(api, integration, failing.url).json
        res = api.post(f"{HOOKS}/{hook['id']}/test").json
        assert res["success"] is False and res["status_code"] == 503
        assert "503" in res["error_message"]
    finally:
        failing.close()


def test_rotate_secret_signs_with_both(api, integration, receiver):
    hook = _hook(api, integration, receiver.url).json
    rotated = api.post(f"{HOOKS}/{hook['id']}/rotate-secret")
    assert rotated.status_code == 200
    new_secret = rotated.json["secret"]
    assert new_secret != hook["secret"] and rotated.json["previous_secret_until"]
    api.post(f"{HOOKS}/{hook['id']}/test")
    req = receiver.requests[-1]
    assert len(req.headers["webhook-signature"].split(" ")) == 2
    for secret in (hook["secret"], new_secret):
        standardwebhooks.Webhook(secret).verify(req.body, req.headers)


def test_scopes(app, client, admin_user, integration):
    reader = ApiClient(client, make_key(app, admin_user, ["webhooks:read"]))
    assert reader.get(HOOKS).status_code == 200
    res = reader.post(
        HOOKS,
        json={"url": "http://127.0.0.1:1/", "events": ["*"], "integration_id": integration["id"]},
    )
    assert res.status_code == 403
    assert reader.post("/api/v1/events", json={"type": "x.y", "data": {}}).status_code == 403


def test_deliveries_filter_by_event_type_and_time(api: ApiClient, integration: dict) -> None:
    for name in ("order.paid", "order.refunded"):
        assert api.post("/api/v1/event-types", json={"name": name}).status_code == 201
    hook = api.post(
        "/api/v1/webhooks",
        json={
            "url": "http://127.0.0.1:9/",
            "events": ["order.*"],
            "integration_id": integration["id"],
        },
    ).json["id"]
    for name in ("order.paid", "order.refunded", "order.paid"):
        assert api.post("/api/v1/events", json={"type": name, "data": {}}).status_code == 202
    url = f"/api/v1/webhooks/{hook}/deliveries"
    paid = api.get(url, query_string={"event_type": "order.paid"}).json["items"]
    assert len(paid) == 2 and {d["event_type"] for d in paid} == {"order.paid"}
    assert len(api.get(url, query_string={"since": "2000-01-01T00:00:00Z"}).json["items"]) == 3
    assert api.get(url, query_string={"until": "2000-01-01T00:00:00Z"}).json["items"] == []
    assert api.get(url, query_string={"since": "yesterday"}).status_code == 422
