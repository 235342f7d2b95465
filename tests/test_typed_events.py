"""Typed events: event types carry a JSON Schema and examples, and publishing checks payloads.

Through the HTTP API: a tenant's own types are saved with a checked schema (a broken one, a
remote reference, an example it refuses are 422s naming the place), published payloads that
break it are 422s listing every failure by JSON pointer with nothing written, a schema change
reaches the next publish, and the built-in and connector types describe what Switchboard
really emits.
"""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from app.events.routes import current_version
from app.store.db import database
from app.store.models import Event
from tests.conftest import ApiClient

TYPES = "/api/v1/event-types"
ORDER = {
    "type": "object",
    "required": ["order_id", "amount"],
    "properties": {
        "order_id": {"type": "string", "pattern": "^ord_"},
        "amount": {"type": "integer", "minimum": 0},
        "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}},
    },
    "$defs": {"line": {"type": "object", "required": ["sku"]}},
}


def _events(app: Any) -> int:
    with app.app_context(), database.connection_context():
        return Event.select().where(Event.type == "order.paid").count()


def test_a_type_with_a_schema_and_examples_is_listed_shown_and_changed(api: ApiClient) -> None:
    created = api.post(
        TYPES,
        json={
            "name": "order.paid",
            "description": "An order was paid",
            "schema": ORDER,
            "examples": [{"order_id": "ord_1", "amount": 42}],
        },
    )
    assert created.status_code == 201, created.json
    assert created.json["schema"] == ORDER and created.json["source"] == "custom"
    one = api.get(f"{TYPES}/order.paid").json
    assert one["schema"] == ORDER and one["examples"] == [{"order_id": "ord_1", "amount": 42}]
    listed = {item["name"]: item for item in api.get(TYPES).json["items"]}
    assert listed["order.paid"]["schema"] == ORDER
    # A new schema must still accept the examples kept; null removes it.
    stricter = {**ORDER, "required": ["order_id", "amount", "currency"]}
    refused = api.patch(f"{TYPES}/order.paid", json={"schema": stricter})
    assert refused.status_code == 422 and "examples.0.currency" in refused.json["errors"]
    patched = api.patch(f"{TYPES}/order.paid", json={"schema": stricter, "examples": []})
    assert patched.status_code == 200 and patched.json["schema"] == stricter
    assert api.patch(f"{TYPES}/order.paid", json={"schema": None}).json["schema"] is None
    assert api.get(f"{TYPES}/order.nothing").status_code == 404
    builtin = api.patch(f"{TYPES}/webhook.disabled", json={"description": "mine now"})
    assert builtin.status_code == 409 and builtin.content_type == "application/problem+json"
    audit = api.get("/api/v1/audit-log?resource_type=event_type").json["items"]
    assert {entry["action"] for entry in audit} == {"event_type.created", "event_type.updated"}


@pytest.mark.parametrize(
    "body, place",
    [
        ({"schema": {"type": "strung"}}, "schema.type"),
        ({"schema": {"$ref": "https://example.com/order.json"}}, "schema.$ref"),
        ({"schema": {"properties": {"x": {"$ref": "other.json#/x"}}}}, "schema.properties.x.$ref"),
        ({"schema": {"$schema": "http://json-schema.org/draft-07/schema#"}}, "schema.$schema"),
        ({"schema": ORDER, "examples": [{"order_id": "x", "amount": -1}]}, "examples.0.amount"),
        ({"schema": ORDER, "examples": [{"amount": 1}]}, "examples.0.order_id"),
        ({"schema": {"description": "x" * 70_000}}, "schema"),
        ({"schema": "a string"}, "schema"),
    ],
)
def test_a_broken_schema_or_example_is_a_422_naming_the_place(
    api: ApiClient, body: dict[str, Any], place: str
) -> None:
    res = api.post(TYPES, json={"name": "order.paid", **body})
    assert res.status_code == 422, res.json
    assert res.content_type == "application/problem+json"
    assert place in res.json["errors"], res.json
    assert api.get(f"{TYPES}/order.paid").status_code == 404  # nothing written


def test_publishing_checks_the_payload_and_lists_every_failure(app: Any, api: ApiClient) -> None:
    api.post(TYPES, json={"name": "order.paid", "schema": ORDER})
    ok = api.post(
        "/api/v1/events", json={"type": "order.paid", "data": {"order_id": "ord_1", "amount": 5}}
    )
    assert ok.status_code == 202, ok.json
    bad = api.post(
        "/api/v1/events",
        json={
            "type": "order.paid",
            "data": {"order_id": "x/1", "amount": -3, "lines": [{"sku": "a"}, {"qty": 1}]},
        },
    )
    assert bad.status_code == 422 and bad.content_type == "application/problem+json"
    assert bad.json["errors"] == {
        "/data/order_id": ["must match the pattern ^ord_"],
        "/data/amount": ["must be at least 0"],
        "/data/lines/1/sku": ["is required"],
    }
    missing = api.post("/api/v1/events", json={"type": "order.paid", "data": {}})
    assert set(missing.json["errors"]) == {"/data/order_id", "/data/amount"}
    # A replayed Idempotency-Key still answers its event; a fresh one is checked first.
    headers = {"Idempotency-Key": "k-1"}
    bad_keyed = api.post("/api/v1/events", json={"type": "order.paid", "data": {}}, headers=headers)
    assert bad_keyed.status_code == 422
    assert _events(app) == 1  # only the valid one was written


def test_a_schema_change_reaches_the_next_publish(app: Any, api: ApiClient) -> None:
    api.post(TYPES, json={"name": "order.paid"})
    data = {"order_id": "nope"}
    assert api.post("/api/v1/events", json={"type": "order.paid", "data": data}).status_code == 202
    with app.app_context(), database.connection_context():
        before = current_version()
    assert api.patch(f"{TYPES}/order.paid", json={"schema": ORDER}).status_code == 200
    with app.app_context(), database.connection_context():
        assert current_version() != before  # every process's cache reloads
    refused = api.post("/api/v1/events", json={"type": "order.paid", "data": data})
    assert refused.status_code == 422 and "/data/amount" in refused.json["errors"]


def test_built_in_events_match_the_schemas_the_catalog_shows(
    app: Any, api: ApiClient, platform: ApiClient, integration: dict[str, Any], receiver: Any
) -> None:
    hook = api.post(
        "/api/v1/webhooks",
        json={"url": receiver.url, "events": ["*"], "integration_id": integration["id"]},
    ).json
    api.patch(f"/api/v1/webhooks/{hook['id']}", json={"description": "x", "status": "disabled"})
    api.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret")
    api.delete(f"/api/v1/webhooks/{hook['id']}")
    key = api.post("/api/v1/api-keys", json={"name": "k"}).json
    api.post(f"/api/v1/api-keys/{key['id']}/rotate", json={})
    api.delete(f"/api/v1/api-keys/{key['id']}")
    api.patch(f"/api/v1/integrations/{integration['id']}", json={"description": "y"})
    tenant = platform.post("/api/v1/tenants", json={"name": "T", "external_id": "t-1"}).json
    platform.patch(f"/api/v1/tenants/{tenant['id']}", json={"name": "T2"})
    platform.post(f"/api/v1/tenants/{tenant['id']}/suspend")
    platform.post(f"/api/v1/tenants/{tenant['id']}/resume")
    api.delete(f"/api/v1/integrations/{integration['id']}")
    catalog = {item["name"]: item for item in api.get(TYPES).json["items"]}
    with app.app_context(), database.connection_context():
        emitted = [(e.type, e.payload) for e in Event.select()]
    seen = set()
    for event_type, payload in emitted:
        entry = catalog[event_type]
        assert entry["source"] == "builtin" and entry["schema"], event_type
        errors = list(Draft202012Validator(entry["schema"]).iter_errors(payload))
        assert errors == [], (event_type, [e.message for e in errors])
        seen.add(event_type)
    families = {"integration": "created updated deleted", "webhook": "created updated deleted"}
    families |= {
        "api_key": "created rotated revoked",
        "tenant": "created updated suspended resumed",
    }
    assert seen == {f"{f}.{verb}" for f, verbs in families.items() for verb in verbs.split()}
    assert all(item["schema"] for item in catalog.values() if item["source"] == "builtin")


def test_connector_types_carry_schemas_their_events_satisfy(api: ApiClient) -> None:
    from plugins import github

    catalog = {item["name"]: item for item in api.get(TYPES).json["items"]}
    push = catalog["github.push"]
    assert push["source"] == "connector" and push["examples"]
    payload = {
        "ref": "refs/heads/main",
        "after": "abc",
        "before": "def",
        "repository": {"full_name": "acme/shop"},
        "sender": {"login": "octocat"},
        "head_commit": {"message": "Fix\n\nmore", "url": "https://x"},
        "commits": [{}],
    }
    event_type, data = github._push(payload)
    data["integration_id"] = "int_x"
    assert list(Draft202012Validator(catalog[event_type]["schema"]).iter_errors(data)) == []
    for item in catalog.values():
        if item["source"] == "connector" and item["name"].startswith("github."):
            assert item["schema"], item["name"]
            for example in item["examples"]:
                assert list(Draft202012Validator(item["schema"]).iter_errors(example)) == []
