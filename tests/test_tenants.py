"""Tenants through the HTTP API: operators manage them, keys act inside one, the header names
one for platform keys, quotas, suspension, erasure, usage, members and per-tenant uniqueness."""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.store.db import database
from app.store.models import DEFAULT_TENANT_ID, TENANT_OWNED, Tenant
from tests.conftest import ApiClient, create_github_integration, make_key, make_user
from tests.peers import WorkerProcess

TENANTS = "/api/v1/tenants"
HEADER = "Switchboard-Tenant"


def _tenant(platform: ApiClient, external_id: str, **fields: Any) -> dict[str, Any]:
    body = {"name": external_id.title(), "external_id": external_id, **fields}
    res = platform.post(TENANTS, json=body)
    assert res.status_code == 201, res.json
    return dict(res.json)


def _admin_of(app: Any, client: Any, tenant: dict[str, Any], email: str) -> ApiClient:
    """An ApiClient with an admin key of ``tenant`` (its admin user made directly)."""
    user = make_user(app, email, role="admin", tenant_id=tenant["id"])
    return ApiClient(client, make_key(app, user, ["admin"], tenant_id=tenant["id"]))


def _in(tenant: dict[str, Any]) -> dict[str, str]:
    return {HEADER: tenant["external_id"]}


def _wait(check: Any, timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not met in {timeout}s")


def _problem(res: Any, status: int) -> dict[str, Any]:
    assert res.status_code == status, (res.status_code, res.json)
    assert res.content_type == "application/problem+json"
    return dict(res.json)


def test_operators_manage_tenants_and_tenant_keys_cannot(app, client, platform, api):
    acme = _tenant(platform, "acme", quotas={"max_webhooks": 5}, settings={"plan": "enterprise"})
    assert acme["id"].startswith("ten_") and acme["status"] == "active"
    assert acme["quotas"]["max_webhooks"] == 5 and acme["settings"] == {"plan": "enterprise"}
    assert platform.get(f"{TENANTS}/acme").json["id"] == acme["id"]  # by external_id
    assert platform.get(f"{TENANTS}/{acme['id']}").json["external_id"] == "acme"
    listed = platform.get(f"{TENANTS}?q=acm").json
    assert [t["id"] for t in listed["items"]] == [acme["id"]]
    renamed = platform.patch(f"{TENANTS}/acme", json={"name": "Acme Corp"})
    assert renamed.status_code == 200 and renamed.json["name"] == "Acme Corp"
    _problem(platform.post(TENANTS, json={"name": "x", "external_id": "acme"}), 409)
    _problem(platform.patch(f"{TENANTS}/acme", json={"quotas": {"requests_per_hour": 0}}), 422)
    _problem(platform.get(f"{TENANTS}/nobody"), 404)
    for call in (
        lambda: platform.delete(f"{TENANTS}/default"),
        lambda: platform.post(f"{TENANTS}/default/suspend"),
    ):
        _problem(call(), 409)
    # A tenant's own admin (the session's admin key is one of the default tenant) cannot.
    for res in (
        api.get(TENANTS),
        api.post(TENANTS, json={"name": "y", "external_id": "y"}),
        api.get(f"{TENANTS}/acme"),
        api.post(f"{TENANTS}/acme/suspend"),
    ):
        _problem(res, 403)
    # Tenant changes are audited and announced in the default tenant, the operator's.
    actions = [
        e["action"] for e in platform.get("/api/v1/audit-log?resource_type=tenant").json["items"]
    ]
    assert actions[:2] == ["tenant.updated", "tenant.created"]
    events = [e["type"] for e in platform.get("/api/v1/events?type=tenant.created").json["items"]]
    assert events == ["tenant.created"]


def test_the_header_names_the_tenant_a_platform_key_acts_in(app, client, platform, api):
    acme = _tenant(platform, "acme")
    created = platform.post(
        "/api/v1/integrations",
        json={
            "name": "gh",
            "type": "webhook",
            "provider": "github",
            "config": {"webhook_secret": "s" * 24},
        },
        headers=_in(acme),
    )
    assert created.status_code == 201, created.json
    # In acme, not in the default tenant (where the platform key is at home).
    assert platform.get("/api/v1/integrations", headers=_in(acme)).json["total"] == 1
    assert platform.get("/api/v1/integrations").json["total"] == 0
    assert platform.get(f"/api/v1/integrations/{created.json['id']}").status_code == 404
    whoami = platform.get("/api/v1/auth/whoami", headers={HEADER: acme["id"]}).json
    assert whoami["tenant"]["id"] == acme["id"] and whoami["platform"] is True
    # A tenant's key never names a tenant, not even its own; an unknown one is refused.
    refused = _problem(api.get("/api/v1/integrations", headers={HEADER: "default"}), 400)
    assert HEADER in refused["errors"] and HEADER in refused["detail"]
    unknown = _problem(platform.get("/api/v1/integrations", headers={HEADER: "nope"}), 400)
    assert HEADER in unknown["errors"]


def test_keys_belong_to_one_tenant_and_never_exceed_their_creator(app, client, platform, api):
    acme = _tenant(platform, "acme")
    acme_admin = _admin_of(app, client, acme, "boss@acme.test")
    child = acme_admin.post(
        "/api/v1/api-keys", json={"name": "ci", "permissions": ["events:write"]}
    )
    assert child.status_code == 201 and child.json["tenant_id"] == acme["id"]
    assert child.json["platform"] is False
    _problem(acme_admin.post("/api/v1/api-keys", json={"name": "op", "platform": True}), 403)
    ci = ApiClient(client, child.json["key"])
    assert ci.get("/api/v1/auth/whoami").json["tenant"]["id"] == acme["id"]
    # Each tenant lists only its own keys; a tenant's admins never see platform keys.
    acme_ids = {k["id"] for k in acme_admin.get("/api/v1/api-keys").json["items"]}
    default_ids = {k["id"] for k in api.get("/api/v1/api-keys").json["items"]}
    assert child.json["id"] in acme_ids and not acme_ids & default_ids
    assert not any(k["platform"] for k in api.get("/api/v1/api-keys").json["items"])
    assert any(k["platform"] for k in platform.get("/api/v1/api-keys").json["items"])
    # A platform key may mint one; acting in acme through the header, it mints acme's keys.
    minted = platform.post(
        "/api/v1/api-keys",
        json={"name": "acme ops", "permissions": ["logs:read"]},
        headers=_in(acme),
    )
    assert minted.status_code == 201 and minted.json["tenant_id"] == acme["id"]


def test_quotas_refuse_with_429_naming_the_quota(app, client, platform):
    acme = _tenant(
        platform,
        "acme",
        quotas={"requests_per_hour": 6, "events_per_day": 1, "max_webhooks": 1, "max_keys": 2},
    )
    admin = _admin_of(app, client, acme, "boss@acme.test")
    integration = create_github_integration(admin)  # request 1
    assert admin.post("/api/v1/event-types", json={"name": "order.paid"}).status_code == 201
    hook = {
        "url": "http://127.0.0.1:9/h",
        "events": ["order.paid"],
        "integration_id": integration["id"],
    }
    assert admin.post("/api/v1/webhooks", json=hook).status_code == 201  # request 3
    full = _problem(admin.post("/api/v1/webhooks", json=hook), 429)
    assert full["type"].endswith("/quota-exceeded") and full["quota"] == "max_webhooks"
    assert "Retry-After" not in admin.post("/api/v1/webhooks", json=hook).headers  # never refills
    event = {"type": "order.paid", "data": {}}
    assert admin.post("/api/v1/events", json=event).status_code == 202  # request 6
    # The requests quota is shared by all the tenant's keys: a second key is refused too.
    other = ApiClient(client, make_key(app, None, ["events:write"], tenant_id=acme["id"]))
    over = other.post("/api/v1/events", json=event)
    assert _problem(over, 429)["quota"] == "requests_per_hour"
    assert int(over.headers["Retry-After"]) >= 1
    # Operators' platform keys spend none of a tenant's requests.
    raised = platform.patch(
        f"{TENANTS}/acme", json={"quotas": {"events_per_day": 1, "max_keys": 3}}
    )
    assert raised.status_code == 200
    day = _problem(admin.post("/api/v1/events", json=event), 429)
    assert (
        day["quota"] == "events_per_day"
        and int(admin.post("/api/v1/events", json=event).headers["Retry-After"]) > 0
    )
    keys = [admin.post("/api/v1/api-keys", json={"name": f"k{n}"}) for n in range(2)]
    assert [k.status_code for k in keys] == [201, 429]  # with the admin's and the other key
    assert keys[1].json["quota"] == "max_keys"


def test_suspension_refuses_keys_and_holds_deliveries_until_resumed(
    app, client, platform, receiver
):
    acme = _tenant(platform, "acme")
    admin = _admin_of(app, client, acme, "boss@acme.test")
    integration = create_github_integration(admin)
    admin.post("/api/v1/event-types", json={"name": "order.paid"})
    hook = {"url": receiver.url, "events": ["order.paid"], "integration_id": integration["id"]}
    assert admin.post("/api/v1/webhooks", json=hook).status_code == 201
    worker = WorkerProcess(app)
    try:
        first = admin.post("/api/v1/events", json={"type": "order.paid", "data": {"n": 1}}).json[
            "id"
        ]
        receiver.wait_for(lambda r: len(r) == 1, timeout=30)
        # An event already in the outbox when the tenant is suspended waits, it is not dropped.
        held = platform.post(
            "/api/v1/events", json={"type": "order.paid", "data": {"n": 2}}, headers=_in(acme)
        )
        suspended = platform.post(f"{TENANTS}/acme/suspend")
        assert suspended.status_code == 200 and suspended.json["status"] == "suspended"
        refused = _problem(admin.get("/api/v1/webhooks"), 403)
        assert refused["type"].endswith("/tenant-suspended")
        # (The event published just before may already have gone; one published while
        # suspended, by the operator, waits.)
        waiting = platform.post(
            "/api/v1/events", json={"type": "order.paid", "data": {"n": 3}}, headers=_in(acme)
        ).json["id"]
        # A worker is running and looks for work every second: two seconds without the
        # suspended tenant's delivery going out is the check (it goes within ms when active).
        time.sleep(2)
        assert waiting not in {r.headers["webhook-id"] for r in receiver.requests}
        assert platform.post(f"{TENANTS}/acme/resume").json["status"] == "active"
        got = receiver.wait_for(lambda r: len(r) >= 3, timeout=30)
        assert [r.headers["webhook-id"] for r in got][0] == first
        assert {held.json["id"], waiting} <= {r.headers["webhook-id"] for r in got}
        assert admin.get("/api/v1/webhooks").status_code == 200
    finally:
        worker.stop()


def _rows_of(app: Any, tenant_id: str) -> dict[str, int]:
    with app.app_context(), database.connection_context():
        counts = {m._meta.table_name: m.of(tenant_id).count() for m in TENANT_OWNED}
    return {table: n for table, n in counts.items() if n}


def test_deleting_a_tenant_erases_everything_it_owns(app, client, platform, receiver):
    acme = _tenant(platform, "acme")
    admin = _admin_of(app, client, acme, "boss@acme.test")
    integration = create_github_integration(admin)
    admin.post("/api/v1/event-types", json={"name": "order.paid"})
    hook = {"url": receiver.url, "events": ["*"], "integration_id": integration["id"]}
    assert admin.post("/api/v1/webhooks", json=hook).status_code == 201
    admin.post(
        "/api/v1/alert-rules",
        json={
            "name": "r",
            "condition": {"type": "webhook_disabled"},
            "target": {"type": "webhook"},
        },
    )
    admin.post("/api/v1/events", json={"type": "order.paid", "data": {"secret": "x"}})
    watcher = create_github_integration(platform)
    platform.post(
        "/api/v1/webhooks",
        json={
            "url": receiver.url + "/ops",
            "events": ["tenant.*"],
            "integration_id": watcher["id"],
        },
    )
    before = _rows_of(app, acme["id"])
    assert {"api_keys", "integrations", "webhooks", "events", "deliveries", "audit_log"} <= set(
        before
    )
    worker = WorkerProcess(app)
    try:
        res = platform.delete(f"{TENANTS}/acme")
        assert res.status_code == 202 and res.json["tenant"]["status"] == "deleting"
        _problem(admin.get("/api/v1/webhooks"), 401)  # its keys stop at once
        job_url = f"/api/v1/jobs/{res.json['job_id']}"
        job = _wait(
            lambda: (j := platform.get(job_url).json).get("status") == "finished" and j,
            what="the erasure job finished",
        )
        assert job["result"]["erased"] is True
        assert _problem(platform.get(f"{TENANTS}/{acme['id']}"), 404)
        assert _rows_of(app, acme["id"]) == {}
        ops = receiver.wait_for(
            lambda r: any(x.path == "/ops" and b"tenant.deleted" in x.body for x in r), timeout=30
        )
        assert ops
        audit = platform.get("/api/v1/audit-log?action=tenant.deleted").json["items"]
        assert [entry["resource_id"] for entry in audit] == [acme["id"]]
    finally:
        worker.stop()


def test_usage_per_day_for_the_tenant_and_its_operator(app, client, platform, receiver):
    acme = _tenant(platform, "acme", quotas={"max_webhooks": 3})
    admin = _admin_of(app, client, acme, "boss@acme.test")
    integration = create_github_integration(admin)
    admin.post("/api/v1/event-types", json={"name": "order.paid"})
    hook = {"url": receiver.url, "events": ["order.paid"], "integration_id": integration["id"]}
    admin.post("/api/v1/webhooks", json=hook)
    worker = WorkerProcess(app)
    try:
        for n in range(3):
            admin.post("/api/v1/events", json={"type": "order.paid", "data": {"n": n}})
        receiver.wait_for(lambda r: len(r) == 3)

        def today() -> dict[str, Any]:
            return admin.get("/api/v1/usage?days=2").json["days"][-1]

        usage = _wait(lambda: (u := today())["deliveries_succeeded"] == 3 and u, what="usage")
    finally:
        worker.stop()
    assert usage["requests"] >= 7 and usage["events"] >= 4  # 3 published + created events
    assert usage["deliveries_failed"] == 0 and usage["gateway_calls"] == 0
    seen = platform.get(f"{TENANTS}/acme/usage?days=1").json
    assert seen["tenant_id"] == acme["id"] and seen["quotas"]["max_webhooks"] == 3
    assert seen["days"][-1]["deliveries_succeeded"] == 3
    # The default tenant's usage does not include acme's deliveries.
    assert platform.get("/api/v1/usage?days=1").json["days"][-1]["deliveries_succeeded"] == 0


def test_members_and_login_choose_a_tenant(app, client, platform):
    acme, globex = _tenant(platform, "acme"), _tenant(platform, "globex")
    admin = _admin_of(app, client, acme, "boss@acme.test")
    added = admin.post(
        "/api/v1/members",
        json={"email": "Pat@Example.com", "role": "member", "password": "pat password"},
    )
    assert added.status_code == 201 and added.json["email"] == "pat@example.com"
    _problem(admin.post("/api/v1/members", json={"email": "pat@example.com", "role": "admin"}), 409)
    globex_admin = _admin_of(app, client, globex, "boss@globex.test")
    also = globex_admin.post(
        "/api/v1/members", json={"email": "pat@example.com", "role": "readonly"}
    )
    assert also.status_code == 201 and also.json["has_password"] is True
    login = client.post(
        "/api/v1/auth/login", json={"email": "pat@example.com", "password": "pat password"}
    )
    assert login.status_code == 201 and login.json["tenant_id"] == acme["id"]
    assert {(t["external_id"], t["role"]) for t in login.json["tenants"]} == {
        ("acme", "member"),
        ("globex", "readonly"),
    }
    chosen = client.post(
        "/api/v1/auth/login",
        json={"email": "pat@example.com", "password": "pat password", "tenant": "globex"},
    )
    assert chosen.json["tenant_id"] == globex["id"] and "events:write" not in chosen.json["scopes"]
    _problem(
        client.post(
            "/api/v1/auth/login",
            json={"email": "pat@example.com", "password": "pat password", "tenant": "default"},
        ),
        403,
    )
    # A member's key follows their role, and stops when they are removed.
    pat = ApiClient(client, login.json["key"])
    assert pat.get("/api/v1/webhooks").status_code == 200
    user_id = added.json["user_id"]
    assert (
        admin.patch(f"/api/v1/members/{user_id}", json={"role": "readonly"}).json["role"]
        == "readonly"
    )
    _problem(pat.post("/api/v1/events", json={"type": "x.y", "data": {}}), 403)
    assert admin.delete(f"/api/v1/members/{user_id}").status_code == 204
    _problem(pat.get("/api/v1/webhooks"), 401)
    # Still a member of globex: removed from acme only.
    again = client.post(
        "/api/v1/auth/login", json={"email": "pat@example.com", "password": "pat password"}
    )
    assert again.json["tenant_id"] == globex["id"]
    assert [m["email"] for m in admin.get("/api/v1/members").json["items"]] == ["boss@acme.test"]


def test_a_password_over_bcrypt_s_72_bytes_is_taken_whole(app, client, platform):
    """72 characters the schema allows can be 288 bytes: every byte counts, none is cut off."""
    acme = _tenant(platform, "acme")
    admin = _admin_of(app, client, acme, "boss@acme.test")
    password = "ü" * 36 + "密码" * 12  # 60 characters, 144 bytes in UTF-8
    added = admin.post(
        "/api/v1/members", json={"email": "li@acme.test", "role": "member", "password": password}
    )
    assert added.status_code == 201, added.json

    def login(attempt: str) -> int:
        answer = client.post(
            "/api/v1/auth/login", json={"email": "li@acme.test", "password": attempt}
        )
        return answer.status_code

    assert login(password) == 201
    assert login(password[:-1] + "x") == 401  # differs only past bcrypt's 72nd byte
    assert login("ü" * 36) == 401  # exactly the first 72 bytes


def test_the_same_idempotency_key_and_event_type_name_in_two_tenants(app, client, platform):
    acme, globex = _tenant(platform, "acme"), _tenant(platform, "globex")
    ids = {}
    for tenant in (acme, globex):
        created = platform.post(
            "/api/v1/event-types", json={"name": "order.paid"}, headers=_in(tenant)
        )
        assert created.status_code == 201, created.json
        res = platform.post(
            "/api/v1/events",
            json={"type": "order.paid", "data": {"tenant": tenant["external_id"]}},
            headers={**_in(tenant), "Idempotency-Key": "same-key"},
        )
        assert res.status_code == 202 and res.json["duplicate"] is False
        ids[tenant["external_id"]] = res.json["id"]
    assert ids["acme"] != ids["globex"]
    for tenant in (acme, globex):
        listed = platform.get("/api/v1/events?type=order.paid", headers=_in(tenant)).json["items"]
        assert [e["id"] for e in listed] == [ids[tenant["external_id"]]]
        again = platform.post(
            "/api/v1/events",
            json={"type": "order.paid", "data": {}},
            headers={**_in(tenant), "Idempotency-Key": "same-key"},
        )
        assert again.json == {"id": ids[tenant["external_id"]], "deliveries": 0, "duplicate": True}


def test_a_cursor_handed_out_in_one_tenant_is_refused_in_another(app, client, platform):
    acme, globex = _tenant(platform, "acme"), _tenant(platform, "globex")
    for _ in range(3):
        create_github_integration(
            ApiClient(client, make_key(app, None, ["admin"], tenant_id=acme["id"]))
        )
    page = platform.get("/api/v1/audit-log?limit=1", headers=_in(acme)).json
    assert page["next_cursor"]
    cursor = page["next_cursor"]
    again = platform.get(f"/api/v1/audit-log?limit=1&cursor={cursor}", headers=_in(acme))
    assert again.status_code == 200
    other = platform.get(f"/api/v1/audit-log?limit=1&cursor={cursor}", headers=_in(globex))
    assert _problem(other, 422)["errors"] == {"cursor": ["invalid cursor"]}


def test_a_write_without_a_tenant_never_lands_in_one(app):
    from app.store.models import Webhook

    with app.app_context(), database.connection_context():
        with pytest.raises(ValueError, match="tenant_id is required"):
            Webhook.create(url="http://x", secret="s", integration="int_x")
        assert Tenant.get_by_id(DEFAULT_TENANT_ID).status == "active"
