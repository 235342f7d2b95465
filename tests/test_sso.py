"""SSO login through an OpenID provider on 127.0.0.1 that signs real RS256 ID tokens: every ID
token check, JWKS rotation, domains, tenants, provisioning, role mapping, disabled users,
password login for SSO users, audit, and the browser redirect with the key in the fragment."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from app.store.models import ApiKey, AuditLog, SsoIdentity, User
from tests.conftest import ApiClient, make_user
from tests.oauth_peers import OidcProviderPeer, follow_authorization, rsa_key

CLIENT_ID, CLIENT_SECRET = "sb-sso-client", "sso-secret-0123456789"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


@pytest.fixture()
def idp(app: Any) -> Any:
    peer = OidcProviderPeer(
        CLIENT_ID, CLIENT_SECRET, app.config["PUBLIC_URL"] + "/api/v1/auth/sso/callback"
    )
    yield peer
    peer.close()


def create_sso(api: ApiClient, idp: Any, **config: Any) -> dict[str, Any]:
    body = {
        "name": "company login",
        "type": "sso",
        "provider": "oidc",
        "status": "active",
        "config": {
            "issuer": idp.issuer,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "allowed_domains": ["example.com"],
            "auto_provision": True,
            "timeout_ms": 3000,
            **config,
        },
    }
    res = api.post("/api/v1/integrations", json=body)
    assert res.status_code == 201, res.json
    return dict(res.json)


def sign_in(client: Any, integration_id: str, return_to: str | None = None) -> Any:
    """Start the login, let the provider redirect back, deliver the callback."""
    url = f"/api/v1/auth/sso/{integration_id}/login"
    start = client.get(url, query_string={"return_to": return_to} if return_to else None)
    assert start.status_code == 302, start.get_json()
    path, _ = follow_authorization(start.headers["Location"])
    return client.get(path)


def test_login_provisions_user_and_returns_a_session_key(app: Any, api: Any, idp: Any) -> None:
    sso = create_sso(api, idp)
    start = api.client.get(f"/api/v1/auth/sso/{sso['id']}/login")
    query = parse_qs(urlsplit(start.headers["Location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"][0]
    assert query["scope"] == ["openid email profile"] and query["state"][0]
    path, _ = follow_authorization(start.headers["Location"])
    res = api.client.get(path)
    assert res.status_code == 200, res.json
    assert res.json["user"]["email"] == "ann@example.com"
    assert res.json["user"]["role"] == "member" and res.json["provisioned"] is True
    assert res.json["key"].startswith("sb_sess_")
    who = ApiClient(api.client, res.json["key"]).get("/api/v1/auth/whoami").json
    assert who["owner"]["email"] == "ann@example.com"
    with app.app_context():
        key = ApiKey.get_by_id(res.json["key_id"])
        lifetime = (key.expires_at - key.created_at).total_seconds()
        assert abs(lifetime - app.config["LOGIN_KEY_TTL"]) < 5
        identity = SsoIdentity.get()
        assert (identity.issuer, identity.subject) == (idp.issuer, "user-1")
        entry = AuditLog.get(AuditLog.action == "auth.sso_login")
        assert entry.actor_user_id == res.json["user"]["id"]
        assert entry.changes["provisioned"] is True
    # the same person again: matched by issuer + subject, not created twice
    again = sign_in(api.client, sso["id"])
    assert again.status_code == 200 and again.json["provisioned"] is False
    assert again.json["user"]["id"] == res.json["user"]["id"]
    assert idp.jwks_requests == 1  # cached between logins


def _bad_signature(idp: Any) -> None:
    idp.signing_key = rsa_key("k1")  # same kid, a key the provider never published


def _wrong_audience(idp: Any) -> None:
    idp.overrides["aud"] = "someone-else"


def _expired(idp: Any) -> None:
    now = int(time.time())
    idp.overrides.update(iat=now - 900, exp=now - 300)


def _other_issuer(idp: Any) -> None:
    idp.overrides["iss"] = "https://evil.example"


def _foreign_azp(idp: Any) -> None:
    idp.overrides.update(aud=[CLIENT_ID, "other"], azp="other")


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (_bad_signature, "signature is invalid"),
        (_wrong_audience, "aud claim is wrong"),
        (_expired, "expired"),
        (_other_issuer, "iss claim is wrong"),
        (_foreign_azp, "azp claim is not this client"),
    ],
)
def test_bad_id_tokens_are_refused(app: Any, api: Any, idp: Any, spoil: Any, reason: str) -> None:
    sso = create_sso(api, idp)
    spoil(idp)
    res = sign_in(api.client, sso["id"])
    assert res.status_code == 401 and res.mimetype == "application/problem+json"
    assert reason in res.json["detail"]
    assert "key" not in res.json
    with app.app_context():
        assert User.select().count() == 1  # only the admin: nobody was provisioned
        failed = AuditLog.get(AuditLog.action == "auth.sso_login_failed")
        assert failed.changes["error"] == "invalid_id_token" and reason in failed.changes["reason"]


def test_replayed_nonce_is_refused(api: Any, idp: Any) -> None:
    sso = create_sso(api, idp)
    first = api.client.get(f"/api/v1/auth/sso/{sso['id']}/login")
    old_nonce = parse_qs(urlsplit(first.headers["Location"]).query)["nonce"][0]
    path, _ = follow_authorization(first.headers["Location"])
    assert api.client.get(path).status_code == 200
    idp.overrides["nonce"] = old_nonce  # an ID token from the earlier login, replayed
    res = sign_in(api.client, sso["id"])
    assert res.status_code == 401 and "nonce claim is wrong" in res.json["detail"]
    replay = api.client.get(path)  # and the earlier callback itself: its state is spent
    assert replay.status_code == 400 and replay.json["errors"] == {
        "state": ["unknown, expired or already used"]
    }


def test_unknown_key_id_refetches_jwks_once(api: Any, idp: Any) -> None:
    sso = create_sso(api, idp)
    assert sign_in(api.client, sso["id"]).status_code == 200
    assert idp.jwks_requests == 1
    rotated = rsa_key("k2")  # the provider rotates: new key published and signing
    idp.published = [idp.signing_key, rotated]
    idp.signing_key = rotated
    assert sign_in(api.client, sso["id"]).status_code == 200
    assert idp.jwks_requests == 2  # one refetch found the new key
    idp.signing_key = rsa_key("k3")  # never published
    res = sign_in(api.client, sso["id"])
    assert res.status_code == 401 and "does not publish" in res.json["detail"]
    assert idp.jwks_requests == 3  # exactly one refetch, then refused


def test_group_claim_maps_to_role(app: Any, api: Any, idp: Any) -> None:
    mapping = [{"claim": "groups", "value": "sb-admins", "role": "admin"}]
    sso = create_sso(api, idp, role_mapping=mapping)
    idp.claims["groups"] = ["staff", "sb-admins"]
    res = sign_in(api.client, sso["id"])
    assert res.json["user"]["role"] == "admin" and "admin" in res.json["scopes"]
    admin_key = res.json["key"]
    idp.claims["groups"] = ["staff"]  # removed from the group at the IdP: demoted next login
    res = sign_in(api.client, sso["id"])
    assert res.json["user"]["role"] == "member" and "admin" not in res.json["scopes"]
    # the earlier session key is capped by the new role at once
    assert ApiClient(api.client, admin_key).get("/api/v1/audit-log").status_code == 403
    with app.app_context():
        roles = [
            e.changes["role"] for e in AuditLog.select().where(AuditLog.action == "auth.sso_login")
        ]
        assert roles == ["admin", "member"]


def test_domain_tenant_and_provisioning_rules(app: Any, api: Any, idp: Any) -> None:
    sso = create_sso(api, idp, tenant_id=TENANT, auto_provision=False)
    idp.claims["tid"] = TENANT
    res = sign_in(api.client, sso["id"])
    assert res.status_code == 403 and "no Switchboard account" in res.json["detail"]
    idp.claims["tid"] = "00000000-0000-0000-0000-000000000000"
    res = sign_in(api.client, sso["id"])
    assert res.status_code == 403 and "another Entra ID tenant" in res.json["detail"]
    idp.claims.update(tid=TENANT, sub="user-2", email="bob@elsewhere.org")
    res = sign_in(api.client, sso["id"])
    assert res.status_code == 403 and "domain is not allowed" in res.json["detail"]
    idp.claims.update(email="cy@example.com", email_verified=False)
    res = sign_in(api.client, sso["id"])
    assert res.status_code == 403 and "not verified" in res.json["detail"]
    # One `@` and a well-formed domain, checked before the domain: this is no example.com
    # address (it was provisioned as one).
    for address in ("eve@evil.com@example.com", "eve@exa mple.com", "@example.com", "x@-a.com"):
        idp.claims.update(email=address, email_verified=True, sub=f"sub-{address}")
        res = sign_in(api.client, sso["id"])
        assert res.status_code == 403 and "malformed" in res.json["detail"], address


def test_a_new_identity_never_takes_over_an_account_with_a_password_or_admin_role(
    app: Any, api: Any, idp: Any, admin_user: Any
) -> None:
    """An ID token with a new subject and an existing account's email: no key for that account
    (the admin of ``create-admin`` and any user with a password), whatever the provider says."""
    sso = create_sso(api, idp, link_existing_by_email=True, auto_provision=True)
    make_user(app, "pat@example.com")  # a local account with a password
    for email in ("admin@example.com", "pat@example.com"):
        for verified in (None, True):  # Entra ID sends no email_verified at all
            idp.claims.pop("email_verified", None)
            if verified is not None:
                idp.claims["email_verified"] = verified
            idp.claims.update(email=email, sub=f"attacker-{email}-{verified}")
            res = sign_in(api.client, sso["id"])
            assert res.status_code == 403, (email, verified, res.json)
            assert "already exists" in res.json["detail"] and "key" not in res.json
    with app.app_context():
        refusals = AuditLog.select().where(AuditLog.action == "auth.sso_login_failed")
        assert {e.changes["error"] for e in refusals} == {"account_exists"}
        assert SsoIdentity.select().count() == 0  # nothing was linked
        assert [u.email for u in User.select().where(User.platform_admin == True)] == []  # noqa: E712


def test_an_existing_account_is_linked_by_email_only_when_safe_and_opted_in(
    app: Any, api: Any, idp: Any
) -> None:
    from app.auth.keys import hash_secret
    from app.store.db import database

    with app.app_context(), database.connection_context():
        invited = User.create(email="ann@example.com", password_hash="")  # no password yet
    off = create_sso(api, idp, auto_provision=False)
    idp.claims["email_verified"] = True
    res = sign_in(api.client, off["id"])  # the integration does not opt in
    assert res.status_code == 403 and "does not link existing accounts" in res.json["detail"]
    assert api.delete(f"/api/v1/integrations/{off['id']}").status_code == 204
    on = create_sso(api, idp, auto_provision=False, link_existing_by_email=True)
    idp.claims.pop("email_verified")
    res = sign_in(api.client, on["id"])  # verification not asserted: refused
    assert res.status_code == 403 and "verified" in res.json["detail"]
    idp.claims["email_verified"] = True
    res = sign_in(api.client, on["id"])
    assert res.status_code == 200 and res.json["linked"] is True
    assert res.json["user"]["id"] == invited.id and res.json["provisioned"] is False
    with app.app_context(), database.connection_context():
        User.update(password_hash=hash_secret("now with one", 4)).execute()
    again = sign_in(api.client, on["id"])  # the identity is linked now: it signs in
    assert again.status_code == 200 and again.json["linked"] is False


def test_role_mapping_never_changes_a_user_it_did_not_bring_in(
    app: Any, api: Any, idp: Any, admin_user: Any
) -> None:
    """A colliding login must not demote the local admin; mapping applies to this
    integration's own users only."""
    mapping = [{"claim": "groups", "value": "sb-admins", "role": "admin"}]
    sso = create_sso(api, idp, role_mapping=mapping, default_role="readonly")
    idp.claims.update(email="admin@example.com", sub="collider")
    assert sign_in(api.client, sso["id"]).status_code == 403
    with app.app_context():
        from app.store.models import Membership

        roles = [m.role for m in Membership.select().where(Membership.user == admin_user.id)]
    assert roles == ["admin"]
    assert api.get("/api/v1/audit-log").status_code == 200  # the admin's key still is one


def test_sso_belongs_to_a_tenant_claims_its_domains_and_is_discovered_by_them(
    app: Any, api: Any, client: Any, idp: Any, platform: Any
) -> None:
    acme = platform.post("/api/v1/tenants", json={"name": "Acme", "external_id": "acme"}).json
    in_acme = {"Switchboard-Tenant": "acme"}
    body = {
        "name": "acme login",
        "type": "sso",
        "provider": "oidc",
        "status": "active",
        "config": {
            "issuer": idp.issuer,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "allowed_domains": ["example.com"],
            "auto_provision": True,
            "timeout_ms": 3000,
        },
    }
    sso = platform.post("/api/v1/integrations", json=body, headers=in_acme)
    assert sso.status_code == 201, sso.json
    # The domain is acme's: no other tenant's SSO integration may claim it.
    taken = api.post("/api/v1/integrations", json=body)
    assert taken.status_code == 409 and "config.allowed_domains" in taken.json["errors"]
    found = client.get("/api/v1/auth/sso/discover", query_string={"email": "ann@Example.com"})
    assert found.status_code == 200, found.json
    assert found.json["integration_id"] == sso.json["id"]
    assert found.json["tenant"]["external_id"] == "acme"
    assert found.json["login_url"].endswith(f"/api/v1/auth/sso/{sso.json['id']}/login")
    for email in ("ann@elsewhere.org", "eve@evil.com@example.com", "nobody"):
        missing = client.get("/api/v1/auth/sso/discover", query_string={"email": email})
        assert missing.status_code in (404, 422), email
    # Provisioned users become members of acme, and of acme only.
    res = sign_in(client, sso.json["id"])
    assert res.status_code == 200, res.json
    assert res.json["tenant_id"] == acme["id"]
    who = ApiClient(client, res.json["key"]).get("/api/v1/auth/whoami").json
    assert who["tenant"]["external_id"] == "acme" and who["owner"]["role"] == "member"
    login = client.post(
        "/api/v1/auth/login", json={"email": "ann@example.com", "password": "irrelevant"}
    )
    assert login.status_code == 401  # no password: SSO only
    # Deleting the integration frees the domain.
    platform.delete(f"/api/v1/integrations/{sso.json['id']}", headers=in_acme)
    assert api.post("/api/v1/integrations", json=body).status_code == 201


def test_disabled_user_is_refused(app: Any, api: Any, idp: Any) -> None:
    sso = create_sso(api, idp)
    assert sign_in(api.client, sso["id"]).status_code == 200
    with app.app_context():
        User.update(disabled=True).where(User.email == "ann@example.com").execute()
    res = sign_in(api.client, sso["id"])
    assert res.status_code == 403 and "disabled" in res.json["detail"]
    with app.app_context():
        assert AuditLog.get(AuditLog.action == "auth.sso_login_failed").changes["error"] == (
            "user_disabled"
        )


def test_sso_users_cannot_password_login_until_a_password_is_set(
    app: Any, api: Any, idp: Any
) -> None:
    sso = create_sso(api, idp)
    assert sign_in(api.client, sso["id"]).status_code == 200
    for password in ("", "x", "anything at all"):
        res = api.client.post(
            "/api/v1/auth/login", json={"email": "ann@example.com", "password": password}
        )
        assert res.status_code in (401, 422)
    result = app.test_cli_runner().invoke(
        args=["set-password", "ann@example.com", "--password", "a long enough password"]
    )
    assert result.exit_code == 0, result.output
    res = api.client.post(
        "/api/v1/auth/login",
        json={"email": "ann@example.com", "password": "a long enough password"},
    )
    assert res.status_code == 201


def test_browser_login_redirects_with_the_key_in_the_fragment(app: Any, api: Any, idp: Any) -> None:
    sso = create_sso(api, idp)
    refused = api.client.get(
        f"/api/v1/auth/sso/{sso['id']}/login", query_string={"return_to": "https://evil.example/"}
    )
    assert refused.status_code == 422
    res = sign_in(api.client, sso["id"], return_to="http://app.test/after-login")
    assert res.status_code == 302 and res.data == b""
    target = urlsplit(res.headers["Location"])
    assert (target.netloc, target.path, target.query) == ("app.test", "/after-login", "")
    fragment = parse_qs(target.fragment)
    assert fragment["key"][0].startswith("sb_sess_") and fragment["key_id"][0].startswith("key_")
    assert ApiClient(api.client, fragment["key"][0]).get("/api/v1/auth/whoami").status_code == 200
    idp.overrides["aud"] = "someone-else"
    res = sign_in(api.client, sso["id"], return_to="http://app.test/after-login")
    fragment = parse_qs(urlsplit(res.headers["Location"]).fragment)
    assert fragment["error"] == ["invalid_id_token"] and "key" not in fragment


def test_browser_login_is_bound_to_the_browser_that_started_it(
    app: Any, api: Any, idp: Any
) -> None:
    sso = create_sso(api, idp)
    start = api.client.get(
        f"/api/v1/auth/sso/{sso['id']}/login", query_string={"return_to": "http://app.test/x"}
    )
    assert (
        "HttpOnly" in start.headers["Set-Cookie"] and "SameSite=Lax" in start.headers["Set-Cookie"]
    )
    path, _ = follow_authorization(start.headers["Location"])
    victim = app.test_client()  # another browser: no binding cookie (login CSRF)
    res = victim.get(path)
    fragment = parse_qs(urlsplit(res.headers["Location"]).fragment)
    assert fragment["error"] == ["browser_mismatch"] and "key" not in fragment


def test_login_needs_an_active_oidc_integration(api: Any, idp: Any, integration: Any) -> None:
    assert api.client.get(f"/api/v1/auth/sso/{integration['id']}/login").status_code == 404
    sso = create_sso(api, idp)
    api.patch(f"/api/v1/integrations/{sso['id']}", json={"status": "inactive"})
    assert api.client.get(f"/api/v1/auth/sso/{sso['id']}/login").status_code == 409
    api.patch(f"/api/v1/integrations/{sso['id']}", json={"status": "active"})
    assert api.post(f"/api/v1/integrations/{sso['id']}/test").json["success"] is True


def test_discovery_issuer_must_match(api: Any, idp: Any) -> None:
    sso = create_sso(api, idp, issuer=idp.issuer + "/")  # not the issuer the provider names
    res = api.client.get(f"/api/v1/auth/sso/{sso['id']}/login")
    assert res.status_code == 502 and "not the configured issuer" in res.json["detail"]


def test_no_secret_in_sso_answers_or_logs(
    app: Any, api: Any, idp: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    sso = create_sso(api, idp)
    res = sign_in(api.client, sso["id"])
    key = res.json["key"]
    answers = [api.get(f"/api/v1/integrations/{sso['id']}"), api.get("/api/v1/audit-log?limit=200")]
    text = "\n".join(answer.get_data(as_text=True) for answer in answers)
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("werkzeug"))
    for secret in (CLIENT_SECRET, key):
        assert secret not in text and secret not in logged
