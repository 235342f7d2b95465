"""API keys and authentication through the HTTP API."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from app.store.db import database
from app.store.models import ApiKey, AuditLog
from tests.conftest import ApiClient, make_key, make_user

KEYS = "/api/v1/api-keys"


def test_create_key_returns_secret_once_and_stores_bcrypt(app, api, client):
    res = api.post(
        KEYS, json={"name": "ci", "permissions": ["integrations:read"], "rate_limit": 50}
    )
    assert res.status_code == 201, res.json
    body = res.json
    secret = body["key"]
    assert re.fullmatch(r"sb_live_[A-Za-z0-9]{40}", secret)
    assert body["key_prefix"] == secret[:16]
    assert body["permissions"] == ["integrations:read"] and body["rate_limit"] == 50
    with app.app_context(), database.connection_context():
        row = ApiKey.get_by_id(body["id"])
        assert row.key_hash.startswith("$2b$") and secret not in row.key_hash
        audit_text = " ".join(str(a.changes) for a in AuditLog.select())
    assert secret not in audit_text
    listed = api.get(KEYS).json
    single = api.get(f"{KEYS}/{body['id']}").json
    assert secret not in str(listed) and secret not in str(single)
    assert "key" not in single and "key_hash" not in single
    # The new key works, with its scopes only.
    new = ApiClient(client, secret)
    assert new.get("/api/v1/integrations").status_code == 200
    forbidden = new.post(
        "/api/v1/integrations", json={"name": "x", "type": "api", "provider": "rest"}
    )
    assert forbidden.status_code == 403
    assert forbidden.content_type == "application/problem+json"


def test_missing_unknown_revoked_expired_keys_are_401(app, api, client, admin_user):
    assert client.get("/api/v1/auth/whoami").status_code == 401
    assert client.get("/api/v1/auth/whoami", headers={"X-API-Key": "nope"}).status_code == 401
    fake = "sb_live_" + "A" * 40
    res = client.get("/api/v1/auth/whoami", headers={"Authorization": f"Bearer {fake}"})
    assert res.status_code == 401 and res.content_type == "application/problem+json"
    assert res.headers["WWW-Authenticate"].startswith("Bearer")

    created = api.post(KEYS, json={"name": "temp", "permissions": []}).json
    temp = ApiClient(client, created["key"])
    assert temp.get("/api/v1/auth/whoami").status_code == 200
    assert api.delete(f"{KEYS}/{created['id']}").status_code == 204
    res = temp.get("/api/v1/auth/whoami")
    assert res.status_code == 401 and "revoked" in res.json["detail"]

    expired = make_key(app, admin_user, ["admin"], expires_at=datetime(2000, 1, 1))
    res = ApiClient(client, expired).get("/api/v1/auth/whoami")
    assert res.status_code == 401 and "expired" in res.json["detail"]


def test_x_api_key_header_and_whoami(api, client, admin_key, admin_user):
    res = client.get("/api/v1/auth/whoami", headers={"X-API-Key": admin_key})
    assert res.status_code == 200
    assert res.json["owner"]["email"] == "admin@example.com"
    assert "admin" in res.json["scopes"]
    assert res.json["key_prefix"] == admin_key[:16]


def test_cannot_grant_scopes_caller_lacks(app, client):
    user = make_user(app, "m@example.com")
    key = ApiClient(client, make_key(app, user, ["keys:write", "integrations:read"]))
    res = key.post(KEYS, json={"name": "escalate", "permissions": ["integrations:write"]})
    assert res.status_code == 403
    assert res.json["missing_scopes"] == ["integrations:write"]
    res = key.post(KEYS, json={"name": "admin", "permissions": ["admin"]})
    assert res.status_code == 403
    ok = key.post(KEYS, json={"name": "narrow", "permissions": ["integrations:read"]})
    assert ok.status_code == 201


def test_member_cannot_see_or_revoke_others_keys(app, api, client):
    alice = make_user(app, "alice@example.com")
    bob = make_user(app, "bob@example.com")
    alice_api = ApiClient(client, make_key(app, alice, ["keys:read", "keys:write"]))
    bob_key = bob_id = None
    bob_api = ApiClient(client, make_key(app, bob, ["keys:read", "keys:write"]))
    bob_key = bob_api.post(KEYS, json={"name": "bob's"}).json
    bob_id = bob_key["id"]
    assert alice_api.get(f"{KEYS}/{bob_id}").status_code == 404
    assert alice_api.delete(f"{KEYS}/{bob_id}").status_code == 404
    assert all(k["id"] != bob_id for k in alice_api.get(KEYS).json["items"])
    assert bob_api.get(f"{KEYS}/{bob_id}").status_code == 200
    assert api.get(f"{KEYS}/{bob_id}").status_code == 200  # admins see all


def test_member_role_caps_key_scopes(app, client):
    """A key stored with `admin` but owned by a member still cannot act as admin."""
    user = make_user(app, "member@example.com")
    key = ApiClient(client, make_key(app, user, ["admin", "logs:read"]))
    assert key.get("/api/v1/audit-log").status_code == 403
    assert key.get("/api/v1/logs").status_code == 200


def test_rotation_grace_period(app, api, client):
    created = api.post(KEYS, json={"name": "rotating", "permissions": ["logs:read"]}).json
    old = created["key"]
    rotated = api.post(f"{KEYS}/{created['id']}/rotate", json={"grace_period_seconds": 60})
    assert rotated.status_code == 200
    new = rotated.json["key"]
    assert new != old and rotated.json["previous_valid_until"]
    assert ApiClient(client, old).get("/api/v1/logs").status_code == 200
    assert ApiClient(client, new).get("/api/v1/logs").status_code == 200
    # No grace: the old secret stops at once.
    again = api.post(f"{KEYS}/{created['id']}/rotate", json={"grace_period_seconds": 0}).json
    assert ApiClient(client, new).get("/api/v1/logs").status_code == 401
    assert ApiClient(client, again["key"]).get("/api/v1/logs").status_code == 200


def test_rotation_grace_expires(app, api, client):
    created = api.post(KEYS, json={"name": "r"}).json
    api.post(f"{KEYS}/{created['id']}/rotate", json={"grace_period_seconds": 60})
    with app.app_context(), database.connection_context():
        ApiKey.update(previous_valid_until=datetime(2000, 1, 1)).where(
            ApiKey.id == created["id"]
        ).execute()
    res = ApiClient(client, created["key"]).get("/api/v1/auth/whoami")
    assert res.status_code == 401


def test_allowed_ips(app, api, client):
    created = api.post(KEYS, json={"name": "ip", "allowed_ips": ["10.0.0.0/8"]}).json
    res = ApiClient(client, created["key"]).get("/api/v1/auth/whoami")
    assert res.status_code == 403  # the test client is 127.0.0.1
    ok = api.post(KEYS, json={"name": "ip2", "allowed_ips": ["127.0.0.1/32", "::1"]}).json
    assert ApiClient(client, ok["key"]).get("/api/v1/auth/whoami").status_code == 200
    bad = api.post(KEYS, json={"name": "ip3", "allowed_ips": ["not-an-ip"]})
    assert bad.status_code == 422 and "allowed_ips" in bad.json["errors"]


def test_allowed_ips_behind_trusted_proxy(app, admin_user):
    from app import create_app

    proxied = create_app({**app.config, "TRUSTED_PROXY_HOPS": 1})
    key = make_key(app, admin_user, ["admin"], allowed_ips=["203.0.113.0/24"])
    c = proxied.test_client()
    hdr = {"Authorization": f"Bearer {key}"}
    assert c.get("/api/v1/auth/whoami", headers=hdr).status_code == 403
    res = c.get("/api/v1/auth/whoami", headers={**hdr, "X-Forwarded-For": "203.0.113.9"})
    assert res.status_code == 200
    # Without the trusted-proxy setting the header is ignored.
    plain = app.test_client()
    assert (
        plain.get(
            "/api/v1/auth/whoami", headers={**hdr, "X-Forwarded-For": "203.0.113.9"}
        ).status_code
        == 403
    )


def test_last_used_at_is_written_at_most_once_a_minute(app, api, admin_key):
    from app.auth.keys import key_prefix

    api.get("/api/v1/auth/whoami")
    with app.app_context(), database.connection_context():
        first = ApiKey.get(ApiKey.key_prefix == key_prefix(admin_key)).last_used_at
    assert first is not None
    api.get("/api/v1/auth/whoami")
    with app.app_context(), database.connection_context():
        assert ApiKey.get(ApiKey.key_prefix == key_prefix(admin_key)).last_used_at == first


def test_key_validation_errors(api):
    res = api.post(KEYS, json={"name": "", "permissions": ["root"], "rate_limit": 0})
    assert res.status_code == 422
    assert set(res.json["errors"]) >= {"name", "permissions", "rate_limit"}
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    res = api.post(KEYS, json={"name": "x", "expires_at": past})
    assert res.status_code == 422 and "expires_at" in res.json["errors"]
    assert api.get(f"{KEYS}/key_missing").status_code == 404


def test_login(app, client):
    make_user(app, "login@example.com", role="member", password="s3cret-pass")
    res = client.post(
        "/api/v1/auth/login", json={"email": "login@example.com", "password": "s3cret-pass"}
    )
    assert res.status_code == 201
    assert res.json["key"].startswith("sb_sess_") and res.json["expires_at"].endswith("Z")
    assert "admin" not in res.json["scopes"]
    who = ApiClient(client, res.json["key"]).get("/api/v1/auth/whoami").json
    assert who["owner"]["email"] == "login@example.com"
    wrong = client.post(
        "/api/v1/auth/login", json={"email": "login@example.com", "password": "nope"}
    )
    unknown = client.post(
        "/api/v1/auth/login", json={"email": "ghost@example.com", "password": "nope"}
    )
    assert wrong.status_code == unknown.status_code == 401
    strip = lambda body: {k: v for k, v in body.items() if k != "request_id"}  # noqa: E731
    assert strip(wrong.json) == strip(unknown.json)


def test_narrow_key_cannot_rotate_or_revoke_a_broader_sibling(app, client):
    user = make_user(app, "sibling@example.com")
    narrow = ApiClient(client, make_key(app, user, ["keys:read", "keys:write"]))
    broad_secret = make_key(app, user, ["keys:read", "keys:write", "integrations:write"])
    broad_id = ApiClient(client, broad_secret).get("/api/v1/auth/whoami").json["id"]
    res = narrow.post(f"{KEYS}/{broad_id}/rotate", json={})
    assert res.status_code == 403 and res.json["missing_scopes"] == ["integrations:write"]
    assert narrow.delete(f"{KEYS}/{broad_id}").status_code == 403
    assert ApiClient(client, broad_secret).get("/api/v1/auth/whoami").status_code == 200


def test_out_of_range_dates_are_422(api):
    res = api.post(KEYS, json={"name": "x", "expires_at": "9999-12-31T23:59:59-01:00"})
    assert res.status_code == 422 and "expires_at" in res.json["errors"]
    res = api.get("/api/v1/audit-log?since=0001-01-01T00:00:00%2B01:00")
    assert res.status_code == 422


def test_failed_logins_are_throttled(app, client):
    make_user(app, "victim@example.com", password="the-right-one")
    for _ in range(10):
        wrong = client.post(
            "/api/v1/auth/login", json={"email": "victim@example.com", "password": "guess"}
        )
        assert wrong.status_code == 401
    res = client.post(
        "/api/v1/auth/login", json={"email": "victim@example.com", "password": "the-right-one"}
    )
    assert res.status_code == 429 and int(res.headers["Retry-After"]) > 0
    assert res.content_type == "application/problem+json"


def test_wrong_secrets_for_a_known_prefix_are_throttled(app, client, admin_key):
    forged = admin_key[:16] + "x" * 32
    codes = [
        client.get("/api/v1/auth/whoami", headers={"X-API-Key": forged}).status_code
        for _ in range(11)
    ]
    assert codes[:10] == [401] * 10 and codes[10] == 429
