"""Tenants are sealed off, proven on every operation of the OpenAPI spec.

The operations come from ``openapi/openapi.json`` (kept current by ``test_openapi``), so an
endpoint added tomorrow is covered the day it is added: one with a path parameter this module
has no resource for fails here until it gets one. For each operation that names a resource,
tenant A's resource, called with a key of tenant B of every role, answers exactly what a
resource that does not exist answers — 404 whenever the role may call the operation at all (a
403 only for a missing scope, the same for any id): existence is never revealed. Every list
under B's keys holds none of A's rows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from app.auth.access import ROLE_SCOPES
from tests.conftest import ApiClient, make_key, make_user

SPEC = json.loads((Path(__file__).resolve().parent.parent / "openapi" / "openapi.json").read_text())
METHODS = ("get", "post", "put", "patch", "delete")
MISSING = "zz_no_such_thing"
#: Operations that name something global or are not called with a key, and why.
NOT_TENANT_SCOPED = {
    "/api/v1/connectors/{name}": "the connector catalog is the same for every tenant",
    "/api/v1/inbound/{integration_id}": "no key: the provider's signature authenticates it",
    "/api/v1/auth/sso/{integration_id}/login": "no key: the login starts for that integration",
}
#: Bodies the operations' schemas require (others get ``{}``).
BODIES: dict[tuple[str, str], Any] = {
    ("post", "/api/v1/webhooks/{webhook_id}/recover"): {"since": "2020-01-01T00:00:00Z"},
    ("patch", "/api/v1/members/{user_id}"): {"role": "member"},
    ("post", "/api/v1/integrations/{integration_id}/sso/identities"): {
        "user_id": "usr_x",
        "subject": "s",
    },
    ("post", "/api/v1/integrations/{integration_id}/actions/{action}"): {
        "method": "GET",
        "path": "/",
    },
}
_SCOPE = re.compile(r"Requires scope `([a-z:]+)`")


def _operations(with_params: bool) -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path, item in SPEC["paths"].items():
        for method in METHODS:
            op = item.get(method)
            if op is None or not op.get("security"):
                continue  # answered without a key: nothing of a tenant's to reach
            if ("{" in path) == with_params and path not in NOT_TENANT_SCOPED:
                found.append((method, path, op))
    return found


@pytest.fixture()
def world(app: Any, client: Any, platform: ApiClient, receiver: Any) -> dict[str, Any]:
    """Tenant A with one of everything (made through the API), and tenant B's keys."""
    a = platform.post("/api/v1/tenants", json={"name": "A", "external_id": "tenant-a"}).json
    b = platform.post("/api/v1/tenants", json={"name": "B", "external_id": "tenant-b"}).json
    owner = make_user(app, "owner@a.test", role="admin", tenant_id=a["id"])
    api_a = ApiClient(client, make_key(app, owner, ["admin"], tenant_id=a["id"]))
    integration = api_a.post(
        "/api/v1/integrations",
        json={
            "name": "a-marker-integration",
            "type": "api",
            "provider": "rest",
            "status": "active",
            "config": {"upstreams": [{"url": receiver.url}]},
        },
    ).json
    assert api_a.post("/api/v1/event-types", json={"name": "amarker.thing"}).status_code == 201
    hook = api_a.post(
        "/api/v1/webhooks",
        json={"url": receiver.url, "events": ["*"], "integration_id": integration["id"]},
    ).json
    event = api_a.post("/api/v1/events", json={"type": "amarker.thing", "data": {"n": 1}}).json
    delivery = api_a.get(f"/api/v1/webhooks/{hook['id']}/deliveries").json["items"][0]
    key = api_a.post("/api/v1/api-keys", json={"name": "a-marker-key"}).json
    rule = api_a.post(
        "/api/v1/alert-rules",
        json={
            "name": "a-marker-rule",
            "condition": {"type": "webhook_disabled"},
            "target": {"type": "webhook"},
        },
    ).json
    job = api_a.post(
        f"/api/v1/integrations/{integration['id']}/actions/request",
        json={"method": "GET", "path": "/"},
    ).json
    member = api_a.post("/api/v1/members", json={"email": "m@a.test", "role": "member"}).json
    sso = api_a.post(
        "/api/v1/integrations",
        json={
            "name": "a-marker-sso",
            "type": "sso",
            "provider": "oidc",
            "config": {
                "issuer": "http://127.0.0.1:9/a",
                "client_id": "a-client",
                "client_secret": "a-secret",
                "allowed_domains": ["a.test"],
            },
        },
    ).json
    identity = api_a.post(
        f"/api/v1/integrations/{sso['id']}/sso/identities",
        json={"user_id": member["user_id"], "subject": "amarker-subject"},
    ).json
    portal = api_a.post("/api/v1/portal-sessions", json={"read_only": True}).json
    keys_b = {
        role: ApiClient(
            client,
            make_key(
                app,
                make_user(app, f"{role}@b.test", role=role, tenant_id=b["id"]),
                sorted(ROLE_SCOPES[role]),
                tenant_id=b["id"],
            ),
        )
        for role in ROLE_SCOPES
    }
    params = {
        "integration_id": integration["id"],
        "webhook_id": hook["id"],
        "delivery_id": delivery["id"],
        "key_id": key["id"],
        "rule_id": rule["id"],
        "job_id": job["job_id"],
        "user_id": member["user_id"],
        "identity_id": identity["id"],
        "tenant_id": a["id"],
        "event_type": "amarker.thing",
        "event_id": event["id"],
        "session_id": portal["id"],
        "action": "request",
        "path": "anything",
    }
    markers = [*params.values(), event["id"], "a-marker", "amarker", "owner@a.test", "m@a.test"]
    markers = [m for m in markers if m not in ("request", "anything")]
    return {
        "a": a,
        "b": b,
        "api_a": api_a,
        "keys_b": keys_b,
        "params": params,
        "markers": markers,
        "sso_id": sso["id"],
    }


def _call(api: ApiClient, method: str, url: str, body: Any) -> Any:
    if method in ("get", "delete"):
        return getattr(api, method)(url)
    return getattr(api, method)(url, json=body)


def _fill(path: str, values: dict[str, str]) -> str:
    names = re.findall(r"{(\w+)}", path)
    unknown = [name for name in names if name not in values]
    assert not unknown, f"{path}: no resource for {unknown}; add one to the world fixture"
    for name in names:
        path = path.replace("{" + name + "}", values[name])
    return path


def test_another_tenant_s_ids_answer_as_if_they_did_not_exist(world: dict[str, Any]) -> None:
    operations = _operations(with_params=True)
    assert len(operations) > 40  # the spec was read: every id-taking operation is here
    missing = {name: MISSING for name in world["params"]}
    missing["action"], missing["path"] = "request", "anything"
    checked = 0
    for method, path, op in operations:
        body = BODIES.get((method, path), {})
        match = _SCOPE.search(op.get("description", ""))
        scope = match.group(1) if match else None
        for role, api in world["keys_b"].items():
            theirs = _call(api, method, _fill(path, world["params"]), body)
            nothing = _call(api, method, _fill(path, missing), body)
            where = f"{method.upper()} {path} as B's {role}"
            assert theirs.status_code == nothing.status_code, (where, theirs.json, nothing.json)
            if path.startswith("/api/v1/tenants"):
                expected = 403  # operators only: the same refusal for any id
            elif scope is None or scope in ROLE_SCOPES[role] or "admin" in ROLE_SCOPES[role]:
                expected = 404
            else:
                expected = 403  # the role lacks the scope, whichever id is asked for
            assert theirs.status_code == expected, (where, theirs.json)
            assert theirs.content_type == "application/problem+json", where
            checked += 1
    assert checked == len(operations) * len(world["keys_b"])


def test_no_list_under_another_tenant_s_key_shows_a_row_of_tenant_a(world: dict[str, Any]) -> None:
    lists = [(m, p) for m, p, _ in _operations(with_params=False) if m == "get"]
    assert {"/api/v1/webhooks", "/api/v1/events", "/api/v1/audit-log"} <= {p for _, p in lists}
    for _, path in lists:
        for role, api in world["keys_b"].items():
            res = api.get(path)
            assert res.status_code in (200, 403), (path, role, res.status_code)
            text = res.get_data(as_text=True)
            leaked = [marker for marker in world["markers"] if marker in text]
            assert leaked == [], (path, role, leaked)


def test_another_tenant_cannot_publish_into_or_subscribe_to_a_s_events(
    world: dict[str, Any],
) -> None:
    b = world["keys_b"]["admin"]
    refused = b.post("/api/v1/events", json={"type": "amarker.thing", "data": {}})
    assert refused.status_code == 422 and "unknown event type" in refused.json["errors"]["type"]
    subscribed = b.post(
        "/api/v1/webhooks",
        json={"url": "http://127.0.0.1:9/b", "events": ["amarker.thing"], "integration_id": "x"},
    )
    assert subscribed.status_code == 422 and "events" in subscribed.json["errors"]
    # B's catch-all webhook gets nothing of A's events.
    integration = b.post(
        "/api/v1/integrations",
        json={
            "name": "b",
            "type": "webhook",
            "provider": "github",
            "config": {"webhook_secret": "s" * 24},
        },
    ).json
    hook = b.post(
        "/api/v1/webhooks",
        json={"url": "http://127.0.0.1:9/b", "events": ["*"], "integration_id": integration["id"]},
    ).json
    published = world["api_a"].post("/api/v1/events", json={"type": "amarker.thing", "data": {}})
    assert published.json["deliveries"] == 1  # A's own webhook only
    got = b.get(f"/api/v1/webhooks/{hook['id']}/deliveries").json["items"]
    assert [d["event_type"] for d in got] == ["webhook.created"]  # its own creation only


def test_another_tenant_s_alert_rules_cannot_watch_a_s_integrations(
    app: Any, world: dict[str, Any]
) -> None:
    b = world["keys_b"]["admin"]
    watched = b.post(
        "/api/v1/alert-rules",
        json={
            "name": "peek",
            "condition": {
                "type": "error_rate",
                "integration_id": world["params"]["integration_id"],
                "threshold_percent": 1,
            },
            "target": {"type": "webhook"},
        },
    )
    assert watched.status_code == 422 and "integration_id" in json.dumps(watched.json["errors"])
    target = b.post(
        "/api/v1/alert-rules",
        json={
            "name": "borrow",
            "condition": {"type": "webhook_disabled"},
            "target": {
                "type": "action",
                "integration_id": world["params"]["integration_id"],
                "action": "request",
            },
        },
    )
    assert target.status_code == 422 and "integration_id" in json.dumps(target.json["errors"])


def test_another_tenant_s_alert_rules_never_fire_for_a_s_subjects(
    app: Any, world: dict[str, Any]
) -> None:
    from app.alerts.evaluate import evaluate_alerts
    from app.store.db import database

    hook_id = world["params"]["webhook_id"]
    b = world["keys_b"]["admin"]
    theirs = b.post(
        "/api/v1/alert-rules",
        json={
            "name": "b",
            "condition": {"type": "webhook_disabled"},
            "target": {"type": "webhook"},
        },
    ).json
    # A's webhook is disabled automatically (as a failing one would be).
    with app.app_context(), database.connection_context():
        from app.store.models import Webhook

        Webhook.update_of(world["a"]["id"], status="disabled", disabled_reason="failing").where(
            Webhook.id == hook_id
        ).execute()
        evaluate_alerts()
    rule_a = world["params"]["rule_id"]
    fired = world["api_a"].get(f"/api/v1/alert-rules/{rule_a}/firings").json["items"]
    assert [f["subject"] for f in fired] == [f"webhook:{hook_id}"]
    assert b.get(f"/api/v1/alert-rules/{theirs['id']}/firings").json["items"] == []


def test_another_tenant_cannot_see_unlink_or_link_a_s_sso_identities(world: dict[str, Any]) -> None:
    """A's SSO identities (on A's SSO integration) are as unknown to B as missing ones, and
    B's admin cannot link A's member to B's own SSO integration."""
    b = world["keys_b"]["admin"]
    sso, identity = world["sso_id"], world["params"]["identity_id"]
    for method, url in (
        ("get", f"/api/v1/integrations/{sso}/sso/identities"),
        ("delete", f"/api/v1/integrations/{sso}/sso/identities/{identity}"),
    ):
        assert _call(b, method, url, None).status_code == 404, url
    link = {"user_id": world["params"]["user_id"], "subject": "b-subject"}
    assert b.post(f"/api/v1/integrations/{sso}/sso/identities", json=link).status_code == 404
    own = b.post(
        "/api/v1/integrations",
        json={
            "name": "b-sso",
            "type": "sso",
            "provider": "oidc",
            "config": {
                "issuer": "http://127.0.0.1:9/b",
                "client_id": "b-client",
                "client_secret": "b-secret",
                "allowed_domains": ["b.test"],
            },
        },
    ).json
    refused = b.post(f"/api/v1/integrations/{own['id']}/sso/identities", json=link)
    assert refused.status_code == 404 and "member" in refused.json["detail"]
    listed = world["api_a"].get(f"/api/v1/integrations/{sso}/sso/identities").json
    assert [i["subject"] for i in listed["items"]] == ["amarker-subject"]
