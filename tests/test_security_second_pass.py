"""Issue 24, second security pass: SSO account takeover and linking, role mapping, email checks,
the OAuth connect callback's browser binding, session-minted keys, /ready and /metrics, and
the credential throttles — each through the HTTP API as a user meets it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest

from app import create_app
from tests.conftest import ApiClient, make_key, make_user
from tests.oauth_peers import AuthorizationServerPeer, OidcProviderPeer, follow_authorization
from tests.peers import WorkerProcess
from tests.test_oauth_connections import CLIENT_ID as OAUTH_CLIENT_ID
from tests.test_oauth_connections import CLIENT_SECRET as OAUTH_CLIENT_SECRET
from tests.test_oauth_connections import create_connection, provider_url
from tests.test_sso import CLIENT_ID, CLIENT_SECRET, create_sso, sign_in

ADMIN_EMAIL = "ops@example.com"


@pytest.fixture()
def idp(app: Any) -> Any:
    peer = OidcProviderPeer(
        CLIENT_ID, CLIENT_SECRET, app.config["PUBLIC_URL"] + "/api/v1/auth/sso/callback"
    )
    yield peer
    peer.close()


@pytest.fixture()
def provider(app: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # the peer's server side, over http
    peer = AuthorizationServerPeer(
        OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, app.config["PUBLIC_URL"] + "/api/v1/oauth/callback"
    )
    yield peer
    peer.close()


def _create_admin(app: Any) -> tuple[str, str]:
    """The operator made by ``create-admin`` (a password, platform admin): their id and key."""
    from app.store.models import User

    result = app.test_cli_runner().invoke(
        args=["create-admin", ADMIN_EMAIL, "--password", "s3cret-pass"]
    )
    assert result.exit_code == 0, result.output
    with app.app_context():
        user_id = User.get(User.email == ADMIN_EMAIL).id
    return user_id, result.output.strip().splitlines()[-1]


def _audit(api: ApiClient, action: str) -> list[dict[str, Any]]:
    res = api.get("/api/v1/audit-log", query_string={"action": action})
    assert res.status_code == 200, res.json
    return list(res.json["items"])


def _refusals(api: ApiClient) -> list[dict[str, Any]]:
    return _audit(api, "auth.sso_login_failed")


def test_sso_login_with_the_create_admin_email_is_refused_until_an_operator_links_it(
    app: Any, client: Any, idp: Any
) -> None:
    """Item 1: a new ``sub`` with the operator's email and no ``email_verified`` gets no key,
    whatever the integration allows; an operator links the identity explicitly, then it signs
    in — and the link is undone as explicitly."""
    admin_id, admin_key = _create_admin(app)
    operator = ApiClient(client, admin_key)
    mapping = [{"claim": "groups", "value": "sb-admins", "role": "admin"}]
    sso = create_sso(
        operator, idp, link_existing_by_email=True, role_mapping=mapping, default_role="readonly"
    )
    idp.claims = {"sub": "entra-ops", "email": ADMIN_EMAIL.upper(), "groups": ["sb-admins"]}
    refused = sign_in(client, sso["id"])
    assert refused.status_code == 403 and "key" not in refused.json
    assert "already exists" in refused.json["detail"]
    entry = _refusals(operator)[0]
    assert entry["changes"]["error"] == "account_exists"
    assert (entry["changes"]["user_id"], entry["changes"]["subject"]) == (admin_id, "entra-ops")

    # A tenant admin cannot link an identity to the operator's account: an operator must.
    tenant_admin = make_user(app, "boss@example.com", role="admin")
    tenant_api = ApiClient(client, make_key(app, tenant_admin, ["admin"]))
    link = {"user_id": admin_id, "subject": "entra-ops"}
    path = f"/api/v1/integrations/{sso['id']}/sso/identities"
    assert tenant_api.post(path, json=link).status_code == 403
    member = ApiClient(client, make_key(app, make_user(app, "m@example.com"), ["keys:read"]))
    assert member.post(path, json=link).status_code == 403
    linked = operator.post(path, json=link)
    assert linked.status_code == 201, linked.json
    assert linked.json["issuer"] == idp.issuer and linked.json["email"] == ADMIN_EMAIL
    assert operator.post(path, json=link).status_code == 409
    assert operator.post(path, json={**link, "user_id": "usr_nobody"}).status_code == 404

    res = sign_in(client, sso["id"])
    assert res.status_code == 200, res.json
    assert res.json["user"]["id"] == admin_id and res.json["linked"] is False
    listed = operator.get(path).json
    assert [i["subject"] for i in listed["items"]] == ["entra-ops"] and listed["total"] == 1
    actions = {
        e["action"]
        for e in operator.get("/api/v1/audit-log", query_string={"limit": 50}).json["items"]
    }
    assert "sso.identity_linked" in actions

    assert operator.delete(f"{path}/{linked.json['id']}").status_code == 204
    assert operator.delete(f"{path}/{linked.json['id']}").status_code == 404
    assert sign_in(client, sso["id"]).status_code == 403  # unlinked: refused again


def test_an_explicitly_linked_member_follows_the_role_mapping_and_others_keep_theirs(
    app: Any, api: ApiClient, client: Any, idp: Any, admin_user: Any
) -> None:
    """Item 2: the colliding login leaves the local admin's role alone; a member an admin
    linked to the integration gets the mapped role at each login."""
    mapping = [{"claim": "groups", "value": "sb-admins", "role": "admin"}]
    sso = create_sso(api, idp, role_mapping=mapping, default_role="readonly")
    idp.claims = {"sub": "collider", "email": "admin@example.com", "email_verified": True}
    assert sign_in(client, sso["id"]).status_code == 403
    members = {m["email"]: m["role"] for m in api.get("/api/v1/members").json["items"]}
    assert members["admin@example.com"] == "admin"

    pat = make_user(app, "pat@example.com", role="member")
    path = f"/api/v1/integrations/{sso['id']}/sso/identities"
    assert api.post(path, json={"user_id": pat.id, "subject": "pat-sub"}).status_code == 201
    idp.claims = {"sub": "pat-sub", "email": "pat@example.com", "groups": ["sb-admins"]}
    res = sign_in(client, sso["id"])
    assert res.status_code == 200 and res.json["user"]["role"] == "admin", res.json
    idp.claims["groups"] = []
    assert sign_in(client, sso["id"]).json["user"]["role"] == "readonly"
    members = {m["email"]: m["role"] for m in api.get("/api/v1/members").json["items"]}
    assert members == {**members, "admin@example.com": "admin", "pat@example.com": "readonly"}


def test_identity_links_need_an_sso_integration_of_the_tenant(
    api: ApiClient, idp: Any, receiver: Any
) -> None:
    rest = api.post(
        "/api/v1/integrations",
        json={
            "name": "upstream",
            "type": "api",
            "provider": "rest",
            "config": {"upstreams": [{"url": receiver.url}]},
        },
    ).json
    assert api.get(f"/api/v1/integrations/{rest['id']}/sso/identities").status_code == 409
    assert api.get("/api/v1/integrations/int_nothing/sso/identities").status_code == 404
    sso = create_sso(api, idp)
    bad = api.post(f"/api/v1/integrations/{sso['id']}/sso/identities", json={"user_id": "x"})
    assert bad.status_code == 422 and "subject" in str(bad.json["errors"])


def test_a_two_at_address_is_refused_before_the_domain_check(
    app: Any, api: ApiClient, client: Any, idp: Any
) -> None:
    """Item 8: ``eve@evil.com@example.com`` is no address of an allowed domain."""
    sso = create_sso(api, idp, auto_provision=True)
    idp.claims = {"sub": "eve", "email": "eve@evil.com@example.com", "email_verified": True}
    res = sign_in(client, sso["id"])
    assert res.status_code == 403 and "malformed" in res.json["detail"]
    assert [e["changes"]["error"] for e in _refusals(api)] == ["invalid_email"]
    emails = [m["email"] for m in api.get("/api/v1/members").json["items"]]
    assert not [e for e in emails if "evil" in e]


def test_a_leaked_authorization_url_connects_nobody_else_s_account(
    app: Any, api: ApiClient, provider: Any
) -> None:
    """Item 11: the connect flow is bound to the browser that opened its start link (the SSO
    login's cookie); a leaked provider URL finished in another browser is refused."""
    conn = create_connection(api, provider)
    started = api.post(f"/api/v1/integrations/{conn['id']}/oauth/authorize", json={}).json
    leaked = provider_url(api, started)  # the user's browser opened the link: bound
    cookie = api.client.get_cookie("sb_oauth_binding", path="/api/v1/oauth/callback")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    link = urlsplit(started["authorization_url"])
    again = api.client.get(f"{link.path}?{link.query}")
    assert again.status_code == 400  # the start link works once

    attacker = app.test_client()
    path, _ = follow_authorization(leaked)  # the attacker approves with their own account
    refused = attacker.get(path)
    assert refused.status_code == 400 and "another browser" in refused.text
    assert provider.token_requests == []  # no code was exchanged
    assert api.get(f"/api/v1/integrations/{conn['id']}/oauth").json == {"connected": False}
    failures = api.get("/api/v1/audit-log", query_string={"action": "oauth.connect_failed"})
    assert [e["changes"]["error"] for e in failures.json["items"]] == ["browser_mismatch"]

    # The user starts again, in their own browser: connected.
    started = api.post(f"/api/v1/integrations/{conn['id']}/oauth/authorize", json={}).json
    path, _ = follow_authorization(provider_url(api, started))
    assert api.client.get(path).status_code == 200
    assert api.get(f"/api/v1/integrations/{conn['id']}/oauth").json["connected"] is True


def _until(condition: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_ready_shows_worker_hosts_and_pids_to_operators_only(
    app: Any, client: Any, api: ApiClient, platform: ApiClient
) -> None:
    """Item 12: the probe's status is public, which hosts and pids run the workers is not."""
    worker = WorkerProcess(app)

    def mine(res: Any) -> list[dict[str, Any]]:  # killed workers of other tests may linger
        return [w for w in res.json.get("workers", []) if w.get("pid") == worker.proc.pid]

    try:
        seen = _until(lambda: (r := platform.get("/api/v1/ready")) and mine(r) and r)
        assert mine(seen)[0]["host"] and mine(seen)[0]["name"]
        for who in (client, api, ApiClient(client, "sb_live_" + "x" * 40)):
            res = who.get("/api/v1/ready")
            assert res.status_code == seen.status_code, res.json
            assert res.json["checks"] == seen.json["checks"]
            assert res.json["workers"], res.json
            for shown in res.json["workers"]:
                assert set(shown) <= {"state", "started_at", "last_heartbeat_age"}, shown
    finally:
        worker.stop()


def test_metrics_token_replaces_the_address_check(app: Any, client: Any, platform_key: str) -> None:
    """Item 12: behind a proxy on the same host every scrape comes from loopback; with
    SWITCHBOARD_METRICS_TOKEN set only the token (or an operator's key) opens /metrics."""
    assert client.get("/metrics").status_code == 200  # loopback, no token set: as before
    token = "m" * 40
    guarded = create_app({**app.config, "METRICS_TOKEN": token}).test_client()
    assert guarded.get("/metrics").status_code == 401  # loopback alone no longer suffices
    wrong = guarded.get("/metrics", headers={"Authorization": "Bearer " + "n" * 40})
    assert wrong.status_code == 401
    scraped = guarded.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert scraped.status_code == 200 and b"switchboard_" in scraped.data
    keyed = guarded.get("/metrics", headers={"Authorization": f"Bearer {platform_key}"})
    assert keyed.status_code == 200


def test_metrics_token_is_validated_and_never_shown(app: Any) -> None:
    from app.config import ConfigError, load_config

    with pytest.raises(ConfigError) as refused:
        load_config("/tmp", environ={"SWITCHBOARD_METRICS_TOKEN": "short-secret"})
    assert "short-secret" not in str(refused.value) and "<redacted>" in str(refused.value)


WHOAMI = "/api/v1/auth/whoami"


def _forged(secret: str) -> str:
    return secret[:16] + "x" * (len(secret) - 16)


def test_a_new_or_rotated_key_cannot_be_locked_out_before_its_first_use(
    api: ApiClient, client: Any
) -> None:
    """Item 7: the prefix is shown in lists; wrong secrets against it throttle guessing, never
    the key, even one not yet used."""
    created = api.post("/api/v1/api-keys", json={"name": "fresh"}).json
    assert created["key_prefix"] in str(api.get("/api/v1/api-keys").json)
    codes = [
        client.get(WHOAMI, headers={"X-API-Key": _forged(created["key"])}).status_code
        for _ in range(11)
    ]
    assert codes == [401] * 10 + [429]
    assert ApiClient(client, created["key"]).get(WHOAMI).status_code == 200  # first use

    rotated = api.post(f"/api/v1/api-keys/{created['id']}/rotate", json={}).json
    for _ in range(11):
        client.get(WHOAMI, headers={"X-API-Key": _forged(rotated["key"])})
    assert ApiClient(client, rotated["key"]).get(WHOAMI).status_code == 200


def _concurrently(app: Any, count: int, request: Any) -> list[int]:
    """``request(client)`` from ``count`` threads released at once; their status codes."""
    barrier = threading.Barrier(count)

    def one(_: int) -> int:
        own = app.test_client()
        barrier.wait(timeout=30)
        return int(request(own).status_code)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_concurrent_wrong_passwords_get_no_more_bcrypt_checks_than_the_limit(app: Any) -> None:
    """Item 6: each 401 is one bcrypt check; a burst of 40 wrong passwords at once gets at most
    ten (the rest 429 before any bcrypt), and the correct password still counts no failure."""
    from app.auth.keys import hash_secret
    from app.store.db import database
    from app.store.models import User

    make_user(app, "slow@example.com", password="right-password")
    with app.app_context(), database.connection_context():  # a real cost: a wide race window
        User.update(password_hash=hash_secret("right-password", 10)).execute()
    body = {"email": "slow@example.com", "password": "wrong-password"}
    codes = _concurrently(app, 40, lambda c: c.post("/api/v1/auth/login", json=body))
    assert (codes.count(401), codes.count(429)) == (10, 30), codes


def test_concurrent_wrong_secrets_get_no_more_bcrypt_checks_than_the_limit(
    app: Any, admin_user: Any
) -> None:
    """Item 6, for key prefixes: a burst of forged secrets at once gets ten bcrypt checks."""
    from app.auth.keys import generate_key, hash_secret

    secret = generate_key("live")
    with app.app_context():
        prepared = (secret, hash_secret(secret, 10))
    make_key(app, admin_user, ["logs:read"], prepared=prepared)
    forged = {"X-API-Key": _forged(secret)}
    codes = _concurrently(app, 40, lambda c: c.get(WHOAMI, headers=forged))
    assert (codes.count(401), codes.count(429)) == (10, 30), codes
    assert ApiClient(app.test_client(), secret).get(WHOAMI).status_code == 200


def test_a_customer_s_identity_provider_never_mints_an_operator_key(
    app: Any, client: Any, platform: ApiClient, idp: Any
) -> None:
    """Item 1, the path around the operator-only link: acme's admin links an identity of their
    own provider to a member who is promoted to operator later; signing in through acme's
    integration then gives a session of acme, never a platform key."""
    acme = platform.post("/api/v1/tenants", json={"name": "Acme", "external_id": "acme"}).json
    boss = make_user(app, "boss@example.com", role="admin", tenant_id=acme["id"])
    acme_admin = ApiClient(client, make_key(app, boss, ["admin"], tenant_id=acme["id"]))
    sso = create_sso(acme_admin, idp)
    dana = make_user(app, "dana@example.com", role="member", tenant_id=acme["id"])
    path = f"/api/v1/integrations/{sso['id']}/sso/identities"
    assert (
        acme_admin.post(path, json={"user_id": dana.id, "subject": "boss-alt"}).status_code == 201
    )
    result = app.test_cli_runner().invoke(args=["create-admin", "dana@example.com"])
    assert result.exit_code == 0, result.output
    idp.claims = {"sub": "boss-alt", "email": "dana@example.com", "email_verified": True}
    res = sign_in(client, sso["id"])
    assert res.status_code == 200, res.json
    assert res.json["platform"] is False and res.json["tenant_id"] == acme["id"]
    session = ApiClient(client, res.json["key"])
    assert session.get("/api/v1/tenants").status_code == 403
    assert session.get("/api/v1/auth/whoami").json["platform"] is False


def _open_link(browser: Any, started: dict[str, Any]) -> str:
    """Open a single-use start link in ``browser``; the provider URL it goes on to."""
    link = urlsplit(started["authorization_url"])
    opened = browser.get(f"{link.path}?{link.query}")
    assert opened.status_code == 302, opened.json
    return str(opened.headers["Location"])


def test_a_user_links_their_own_identity_from_their_own_browser_only(
    app: Any, api: ApiClient, client: Any, idp: Any, admin_user: Any
) -> None:
    """Item 1, the user's own explicit link: signed in with their password, the admin links
    their identity at the provider; a leaked provider URL links nobody else's."""
    sso = create_sso(api, idp)
    idp.claims = {"sub": "admin-entra", "email": "admin@example.com"}
    assert sign_in(client, sso["id"]).status_code == 403  # never by email
    login = client.post(
        "/api/v1/auth/login", json={"email": "admin@example.com", "password": "correct horse"}
    )
    session = ApiClient(client, login.json["key"])
    link = f"/api/v1/auth/sso/{sso['id']}/link"

    leaked = _open_link(client, session.post(link, json={}).json)
    path, _ = follow_authorization(leaked)
    stolen = app.test_client().get(path)  # the attacker's browser, the attacker's account
    assert stolen.status_code == 400 and "another browser" in stolen.json["detail"]
    assert api.get(f"/api/v1/integrations/{sso['id']}/sso/identities").json["total"] == 0

    path, _ = follow_authorization(_open_link(client, session.post(link, json={}).json))
    linked = client.get(path)
    assert linked.status_code == 200, linked.json
    assert linked.json["user"]["id"] == admin_user.id and linked.json["linked"] is True
    assert sign_in(app.test_client(), sso["id"]).json["user"]["id"] == admin_user.id
    actions = [e["changes"].get("by") for e in _audit(api, "sso.identity_linked")]
    assert actions == ["the user"]

    # The identity is the admin's now: nobody else links it to themselves.
    make_user(app, "pat@example.com", password="pat-password")
    pat_login = client.post(
        "/api/v1/auth/login", json={"email": "pat@example.com", "password": "pat-password"}
    )
    pat = ApiClient(client, pat_login.json["key"])
    path, _ = follow_authorization(_open_link(client, pat.post(link, json={}).json))
    taken = client.get(path)
    assert taken.status_code == 409 and "another user" in taken.json["detail"]
    ownerless = ApiClient(client, make_key(app, None, ["admin"]))
    assert ownerless.post(link, json={}).status_code == 403
