"""The role model (issue 10): admins configure, members operate, read-only users read."""

from __future__ import annotations

from typing import Any

from tests.conftest import ApiClient, make_key, make_user


def _login(client: Any, app: Any, email: str, role: str) -> ApiClient:
    make_user(app, email, role=role, password="pass-" + role)
    res = client.post("/api/v1/auth/login", json={"email": email, "password": "pass-" + role})
    assert res.status_code == 201, res.json
    return ApiClient(client, res.json["key"])


def _forbidden(res: Any, scope: str) -> None:
    assert res.status_code == 403, res.json
    assert res.content_type == "application/problem+json"
    assert res.json["required_scope"] == scope


def test_members_cannot_change_integrations_webhooks_or_alert_rules(app, api, client, integration):
    hook = api.post(
        "/api/v1/webhooks",
        json={"url": "http://127.0.0.1:1/", "events": ["*"], "integration_id": integration["id"]},
    ).json
    rule = {"name": "r", "condition": {"type": "webhook_disabled"}}
    rule["target"] = {"type": "webhook", "webhook_id": hook["id"]}
    member = _login(client, app, "member@example.com", "member")
    integ, hook_url = f"/api/v1/integrations/{integration['id']}", f"/api/v1/webhooks/{hook['id']}"
    _forbidden(member.patch(integ, json={"name": "mine"}), "integrations:write")
    _forbidden(member.delete(integ), "integrations:write")
    _forbidden(member.post(f"{integ}/oauth/revoke"), "integrations:write")
    _forbidden(member.patch(hook_url, json={"url": "http://127.0.0.1:2/"}), "webhooks:write")
    _forbidden(member.post(f"{hook_url}/rotate-secret"), "webhooks:write")
    _forbidden(member.delete(hook_url), "webhooks:write")
    _forbidden(member.post("/api/v1/alert-rules", json=rule), "alerts:write")
    # A key stored with the scope (say, from before the role model) is still capped by the role.
    user = make_user(app, "old@example.com")
    older = ApiClient(client, make_key(app, user, ["webhooks:write"]))
    refused = older.post(f"{hook_url}/rotate-secret")
    _forbidden(refused, "webhooks:write")
    assert refused.json["detail"] == "The `member` role does not allow `webhooks:write`."
    # Members operate and read: integrations, webhooks, their own keys.
    assert member.get(integ).status_code == 200
    assert member.get(hook_url).status_code == 200
    assert member.post("/api/v1/api-keys", json={"name": "own"}).status_code == 201
    assert api.patch(hook_url, json={"url": "http://127.0.0.1:2/"}).status_code == 200


def test_read_only_users_only_read(app, client, integration):
    reader = _login(client, app, "reader@example.com", "readonly")
    assert reader.get(f"/api/v1/integrations/{integration['id']}").status_code == 200
    assert reader.get("/api/v1/webhooks").status_code == 200
    _forbidden(reader.post("/api/v1/api-keys", json={"name": "k"}), "keys:write")
    _forbidden(reader.post("/api/v1/events", json={}), "events:write")
    whoami = reader.get("/api/v1/auth/whoami").json
    assert all(scope.endswith(":read") for scope in whoami["scopes"])
