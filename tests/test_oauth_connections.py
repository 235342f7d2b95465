"""OAuth2 connections against authlib's own authorization server on 127.0.0.1: connect with
PKCE, single-use state, encrypted storage, refresh (locked, rotated, kept, refused), revocation,
and the gateway's retry after a 401."""

from __future__ import annotations

import base64
import json
import threading
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from app.gateway.logwriter import gateway_log_writer
from app.oauth import tokens
from app.oauth.pkce import code_challenge
from app.store.db import database
from app.store.models import (
    DEFAULT_TENANT_ID,
    AuditLog,
    Event,
    Integration,
    IntegrationLog,
    OAuthToken,
    utcnow,
)
from app.store.redis import get_redis
from tests.oauth_peers import AuthorizationServerPeer, follow_authorization

CLIENT_ID, CLIENT_SECRET = "switchboard-client", "client-secret-0123456789"


@pytest.fixture()
def provider(app: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # the peer's server side, over http
    peer = AuthorizationServerPeer(
        CLIENT_ID, CLIENT_SECRET, app.config["PUBLIC_URL"] + "/api/v1/oauth/callback"
    )
    yield peer
    peer.close()


def create_connection(api: Any, provider: Any, **config: Any) -> dict[str, Any]:
    body = {
        "name": "acme account",
        "type": "api",
        "provider": "oauth2",
        "config": {
            "authorize_url": f"{provider.url}/authorize",
            "token_url": f"{provider.url}/token",
            "revoke_url": f"{provider.url}/revoke",
            "userinfo_url": f"{provider.url}/api/user",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scopes": ["read", "write"],
            "timeout_ms": 3000,
            **config,
        },
    }
    res = api.post("/api/v1/integrations", json=body)
    assert res.status_code == 201, res.json
    return dict(res.json)


def provider_url(api: Any, started: dict[str, Any]) -> str:
    """Open the single-use start link in this browser (the test client, which keeps the
    binding cookie); return the provider URL it redirects to."""
    link = urlsplit(started["authorization_url"])
    assert link.path == "/api/v1/oauth/start", started
    opened = api.client.get(f"{link.path}?{link.query}")
    assert opened.status_code == 302, opened.json
    return str(opened.headers["Location"])


def connect(api: Any, provider: Any, integration_id: str, return_to: str | None = None) -> Any:
    """Authorize, let the provider redirect, and deliver the callback; return its response."""
    body = {"return_to": return_to} if return_to else {}
    started = api.post(f"/api/v1/integrations/{integration_id}/oauth/authorize", json=body)
    assert started.status_code == 200, started.json
    path, _ = follow_authorization(provider_url(api, started.json))
    return api.client.get(path)


def stored(app: Any, integration_id: str) -> tokens.TokenSet:
    with app.app_context():
        found = tokens.load(DEFAULT_TENANT_ID, integration_id)
    assert found is not None
    return found


def expire(app: Any, integration_id: str) -> None:
    """Make the stored access token look expired (as if its hour had passed)."""
    with app.app_context():
        OAuthToken.update(expires_at=utcnow() - timedelta(seconds=5)).where(
            OAuthToken.integration == integration_id
        ).execute()


def test_pkce_rfc7636_appendix_b() -> None:
    octets = bytes(
        [116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186, 22, 212, 37]
        + [77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121]
    )
    verifier = base64.urlsafe_b64encode(octets).rstrip(b"=").decode()
    assert verifier == "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_connect_stores_tokens_encrypted(app: Any, api: Any, provider: Any) -> None:
    conn = create_connection(api, provider)
    started = api.post(f"/api/v1/integrations/{conn['id']}/oauth/authorize", json={})
    assert started.status_code == 200
    url = provider_url(api, started.json)
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["state"] == [started.json["state"]]
    assert query["scope"] == ["read write"]
    with app.app_context():
        remembered = json.loads(get_redis().get(f"sb:oauth:state:connect:{started.json['state']}"))
        assert 0 < get_redis().ttl(f"sb:oauth:state:connect:{started.json['state']}") <= 600
    assert query["code_challenge"] == [code_challenge(remembered["code_verifier"])]

    path, _ = follow_authorization(url)
    done = api.client.get(path)
    assert done.status_code == 200 and done.mimetype == "text/html"
    assert "is connected" in done.text

    issued_access = next(iter(provider.access))
    issued_refresh = next(iter(provider.refresh))
    with app.app_context():
        row = OAuthToken.get(OAuthToken.integration == conn["id"])
        assert issued_access not in row.access_token and issued_refresh not in row.refresh_token
        assert row.access_token.startswith("gAAAA")  # a Fernet token
        assert Integration.get_by_id(conn["id"]).status == "active"
        assert Event.get(Event.type == "oauth.connected").payload["integration_id"] == conn["id"]
        audit = AuditLog.get(AuditLog.action == "oauth.connected")
        assert audit.actor_key_id is not None and audit.resource_id == conn["id"]
    assert stored(app, conn["id"]).access_token == issued_access
    assert stored(app, conn["id"]).refresh_token == issued_refresh
    status = api.get(f"/api/v1/integrations/{conn['id']}/oauth").json
    assert status["connected"] is True and status["has_refresh_token"] is True
    assert api.post(f"/api/v1/integrations/{conn['id']}/test").json["success"] is True


def test_server_checks_pkce(app: Any, api: Any, provider: Any) -> None:
    conn = create_connection(api, provider)
    started = api.post(f"/api/v1/integrations/{conn['id']}/oauth/authorize", json={}).json
    key = f"sb:oauth:state:connect:{started['state']}"
    with app.app_context():  # a verifier that does not match the challenge the server saw
        data = json.loads(get_redis().get(key))
        data["code_verifier"] = "x" * 64
        get_redis().set(key, json.dumps(data), ex=600)
    url = provider_url(api, started)
    path, _ = follow_authorization(url)
    res = api.client.get(path)
    assert res.status_code == 502 and "invalid_grant" in res.text
    assert provider.grant_types() == ["authorization_code"]
    with app.app_context():
        assert OAuthToken.select().count() == 0
        log = IntegrationLog.get(IntegrationLog.event_type == "oauth.connect")
        assert log.status == "error" and "Code challenge failed" in log.error_message
    # and a request without a challenge never gets a code from this server
    bare = url.replace("code_challenge=", "no_challenge=")
    _, query = follow_authorization(bare)
    assert query["error"] == "invalid_request" and "code" not in query


def test_state_replay_refused(app: Any, api: Any, provider: Any) -> None:
    conn = create_connection(api, provider)
    started = api.post(f"/api/v1/integrations/{conn['id']}/oauth/authorize", json={}).json
    path, _ = follow_authorization(provider_url(api, started))
    assert api.client.get(path).status_code == 200
    version = stored(app, conn["id"]).version
    replay = api.client.get(path)
    assert replay.status_code == 400
    assert replay.mimetype == "application/problem+json"
    assert replay.json["errors"] == {"state": ["unknown, expired or already used"]}
    assert provider.grant_types() == ["authorization_code"]  # no second exchange
    assert stored(app, conn["id"]).version == version
    unknown = api.client.get("/api/v1/oauth/callback?code=abc&state=never-issued")
    assert unknown.status_code == 400
    expired = api.post(f"/api/v1/integrations/{conn['id']}/oauth/authorize", json={}).json
    with app.app_context():
        get_redis().delete(f"sb:oauth:state:connect:{expired['state']}")  # its TTL ran out
    assert (
        api.client.get(f"/api/v1/oauth/callback?code=abc&state={expired['state']}").status_code
        == 400
    )


def test_provider_error_is_recorded_and_shown(app: Any, api: Any, provider: Any) -> None:
    conn = create_connection(api, provider)
    started = api.post(f"/api/v1/integrations/{conn['id']}/oauth/authorize", json={}).json
    path, query = follow_authorization(provider_url(api, started) + "&deny=1")
    assert query["error"] == "access_denied"
    res = api.client.get(path)
    assert res.status_code == 400 and "access_denied" in res.text
    assert provider.token_requests == []
    with app.app_context():
        log = IntegrationLog.get(IntegrationLog.event_type == "oauth.connect")
        assert log.status == "error" and "access_denied" in log.error_message
        assert AuditLog.get(AuditLog.action == "oauth.connect_failed").resource_id == conn["id"]
        assert OAuthToken.select().count() == 0


def test_return_to_is_allow_listed_and_followed(api: Any, provider: Any) -> None:
    conn = create_connection(api, provider)
    url = f"/api/v1/integrations/{conn['id']}/oauth/authorize"
    refused = api.post(url, json={"return_to": "https://evil.example/x"})
    assert refused.status_code == 422 and "return_to" in refused.json["errors"]
    res = connect(api, provider, conn["id"], return_to="http://app.test/settings?tab=1")
    assert res.status_code == 302 and res.data == b""
    target = urlsplit(res.headers["Location"])
    assert target.netloc == "app.test" and target.path == "/settings"
    assert parse_qs(target.query) == {
        "tab": ["1"],
        "integration_id": [conn["id"]],
        "oauth": ["connected"],
    }


def test_concurrent_refresh_makes_one_token_request(app: Any, api: Any, provider: Any) -> None:
    conn = create_connection(api, provider)
    connect(api, provider, conn["id"])
    expire(app, conn["id"])
    provider.token_delay = 0.5  # keep the refresh in flight while the others arrive
    results: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def use() -> None:
        try:
            with app.app_context():
                barrier.wait()
                results.append(tokens.access_token(DEFAULT_TENANT_ID, conn["id"]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            database.close()

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert provider.grant_types() == ["authorization_code", "refresh_token"]
    assert len(set(results)) == 1 and len(results) == 8
    assert results[0] == stored(app, conn["id"]).access_token
    assert provider.access[results[0]].valid()


def test_rotated_refresh_token_persisted(app: Any, api: Any, provider: Any) -> None:
    conn = create_connection(api, provider)
    connect(api, provider, conn["id"])
    first = stored(app, conn["id"])
    expire(app, conn["id"])
    with app.app_context():
        fresh = tokens.access_token(DEFAULT_TENANT_ID, conn["id"])
    second = stored(app, conn["id"])
    assert fresh == second.access_token != first.access_token
    assert second.refresh_token != first.refresh_token
    assert provider.refresh[second.refresh_token].valid()
    assert not provider.refresh[first.refresh_token].valid()  # rotated away at the provider
    assert second.version == first.version + 1
    expire(app, conn["id"])  # the persisted rotated token works for the next refresh
    with app.app_context():
        tokens.access_token(DEFAULT_TENANT_ID, conn["id"])
    assert provider.grant_types().count("refresh_token") == 2
    with app.app_context():
        logs = IntegrationLog.select().where(IntegrationLog.event_type == "oauth.refresh")
        assert [log.event_data["rotated_refresh_token"] for log in logs] == [True, True]


def test_missing_refresh_token_keeps_the_old_one(app: Any, api: Any, provider: Any) -> None:
    provider.rotate_refresh_tokens = False
    conn = create_connection(api, provider)
    connect(api, provider, conn["id"])
    first = stored(app, conn["id"])
    expire(app, conn["id"])
    with app.app_context():
        tokens.access_token(DEFAULT_TENANT_ID, conn["id"])
    second = stored(app, conn["id"])
    assert second.access_token != first.access_token
    assert second.refresh_token == first.refresh_token
    assert len(provider.refresh) == 1  # the provider never issued another one
    expire(app, conn["id"])
    with app.app_context():
        tokens.access_token(DEFAULT_TENANT_ID, conn["id"])  # the kept refresh token still refreshes
    assert provider.grant_types() == ["authorization_code", "refresh_token", "refresh_token"]


def test_invalid_grant_sets_error_and_emits_event(app: Any, api: Any, provider: Any) -> None:
    conn = create_connection(api, provider)
    connect(api, provider, conn["id"])
    provider.revoke_all_refresh_tokens()
    expire(app, conn["id"])
    with app.app_context():
        with pytest.raises(tokens.TokenUnavailable) as caught:
            tokens.access_token(DEFAULT_TENANT_ID, conn["id"])
    assert "invalid_grant" in caught.value.message and caught.value.retryable is False
    assert provider.grant_types() == ["authorization_code", "refresh_token"]  # not retried
    with app.app_context():
        assert Integration.get_by_id(conn["id"]).status == "error"
        event = Event.get(Event.type == "oauth.refresh_failed")
        assert event.payload["integration_id"] == conn["id"]
        assert event.payload["error"] == "invalid_grant"
        assert "reconnect" in event.payload["message"]
    test = api.post(f"/api/v1/integrations/{conn['id']}/test").json
    assert test["success"] is False


def test_transient_refresh_failure_is_retried(app: Any, api: Any, provider: Any) -> None:
    conn = create_connection(api, provider)
    connect(api, provider, conn["id"])
    expire(app, conn["id"])
    provider.token_outage = True
    with app.app_context():
        with pytest.raises(tokens.TokenUnavailable) as caught:
            tokens.access_token(DEFAULT_TENANT_ID, conn["id"])
        assert caught.value.retryable is True and "HTTP 503" in caught.value.message
        assert Integration.get_by_id(conn["id"]).status == "active"  # not the admin's problem yet
        assert Event.select().where(Event.type == "oauth.refresh_failed").count() == 0
    assert provider.grant_types().count("refresh_token") == 1 + len(tokens.RETRY_PAUSES)
    provider.token_outage = False
    with app.app_context():
        assert (
            tokens.access_token(DEFAULT_TENANT_ID, conn["id"])
            == stored(app, conn["id"]).access_token
        )


def test_scheduled_refresh_renews_expiring_tokens(app: Any, api: Any, provider: Any) -> None:
    conn = create_connection(api, provider)
    connect(api, provider, conn["id"])
    first = stored(app, conn["id"])
    with app.app_context():
        assert tokens.refresh_due(timedelta(seconds=60)) == 0  # an hour left: nothing due
        assert tokens.refresh_due(timedelta(hours=2)) == 1
    assert stored(app, conn["id"]).access_token != first.access_token
    assert provider.grant_types() == ["authorization_code", "refresh_token"]


def test_revoke_at_provider_and_delete(app: Any, api: Any, provider: Any) -> None:
    conn = create_connection(api, provider)
    connect(api, provider, conn["id"])
    first = stored(app, conn["id"])
    res = api.post(f"/api/v1/integrations/{conn['id']}/oauth/revoke")
    assert res.status_code == 200
    assert res.json == {"revoked_at_provider": True, "provider_error": None}
    assert [r["token_type_hint"] for r in provider.revocations] == ["refresh_token", "access_token"]
    assert not provider.access[first.access_token].valid()
    assert api.get(f"/api/v1/integrations/{conn['id']}/oauth").json == {"connected": False}
    with app.app_context():
        assert OAuthToken.select().count() == 0
        assert Integration.get_by_id(conn["id"]).status == "inactive"
        assert Event.get(Event.type == "oauth.revoked").payload["revoked_at_provider"] is True
    assert api.post(f"/api/v1/integrations/{conn['id']}/oauth/revoke").status_code == 409


def test_presets_are_data(api: Any) -> None:
    res = api.post(
        "/api/v1/integrations",
        json={
            "name": "gh",
            "type": "api",
            "provider": "oauth2",
            "config": {"preset": "github", "client_id": "Iv1.abc", "client_secret": "s"},
        },
    )
    assert res.status_code == 201, res.json
    started = api.post(f"/api/v1/integrations/{res.json['id']}/oauth/authorize", json={}).json
    url = urlsplit(provider_url(api, started))
    assert (url.scheme, url.netloc, url.path) == ("https", "github.com", "/login/oauth/authorize")
    entra = api.post(
        "/api/v1/integrations",
        json={
            "name": "graph",
            "type": "api",
            "provider": "oauth2",
            "config": {"preset": "microsoft", "tenant": "contoso.onmicrosoft.com"}
            | {"client_id": "c", "client_secret": "s"},
        },
    ).json
    started = api.post(f"/api/v1/integrations/{entra['id']}/oauth/authorize", json={}).json
    assert provider_url(api, started).startswith(
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize?"
    )
    no_urls = api.post(
        "/api/v1/integrations",
        json={"name": "x", "type": "api", "provider": "oauth2"}
        | {"config": {"client_id": "c", "client_secret": "s"}},
    )
    assert no_urls.status_code == 422
    assert set(no_urls.json["errors"]) == {"config.authorize_url", "config.token_url"}
    config = {"preset": "google", "client_id": "c", "client_secret": "s"}
    reserved = api.post(
        "/api/v1/integrations",
        json={"name": "x", "type": "api", "provider": "oauth2"}
        | {"config": config | {"authorize_params": {"state": "fixed"}}},
    )
    assert reserved.status_code == 422
    assert list(reserved.json["errors"]) == ["config.authorize_params"]


def test_authorize_refuses_other_integrations(api: Any, integration: dict[str, Any]) -> None:
    res = api.post(f"/api/v1/integrations/{integration['id']}/oauth/authorize", json={})
    assert res.status_code == 409
    assert api.post("/api/v1/integrations/int_nope/oauth/authorize", json={}).status_code == 404


def _rest_via_oauth(api: Any, provider: Any, oauth_id: str) -> dict[str, Any]:
    res = api.post(
        "/api/v1/integrations",
        json={
            "name": "acme api",
            "type": "api",
            "provider": "rest",
            "status": "active",
            "config": {
                "upstreams": [{"url": f"{provider.url}/api"}],
                "auth": {"type": "oauth2", "integration_id": oauth_id},
                "timeout_ms": 3000,
            },
        },
    )
    assert res.status_code == 201, res.json
    return dict(res.json)


def test_gateway_refreshes_after_401(app: Any, api: Any, provider: Any) -> None:
    conn = create_connection(api, provider)
    connect(api, provider, conn["id"])
    gateway = _rest_via_oauth(api, provider, conn["id"])
    first = stored(app, conn["id"])
    ok = api.get(f"/api/v1/gateway/{gateway['id']}/user")
    assert ok.status_code == 200 and ok.json == {"login": "alice", "path": "user"}
    provider.revoke_access_token(first.access_token)  # the provider drops the token early
    res = api.get(f"/api/v1/gateway/{gateway['id']}/user")
    assert res.status_code == 200 and res.json["login"] == "alice"
    second = stored(app, conn["id"])
    assert provider.api_requests == [first.access_token, first.access_token, second.access_token]
    assert provider.grant_types() == ["authorization_code", "refresh_token"]
    gateway_log_writer(app).flush()  # gateway logs are written off the request path
    with app.app_context():
        last = IntegrationLog.select().where(IntegrationLog.event_type == "gateway.request")
        assert [log.event_data.get("token_refreshed") for log in last] == [None, True]
    provider.revoke_all_refresh_tokens()
    provider.revoke_access_token(second.access_token)
    dead = api.get(f"/api/v1/gateway/{gateway['id']}/user")
    assert dead.status_code == 502 and "invalid_grant" in dead.json["detail"]


def test_rest_action_uses_and_refreshes_the_token(app: Any, api: Any, provider: Any) -> None:
    from app.connectors.runtime import execute_action

    conn = create_connection(api, provider)
    connect(api, provider, conn["id"])
    rest = _rest_via_oauth(api, provider, conn["id"])
    provider.revoke_access_token(stored(app, conn["id"]).access_token)
    with app.app_context():
        outcome = execute_action(
            Integration.get_by_id(rest["id"]), "request", {"method": "GET", "path": "/user"}
        )
    assert outcome.success, outcome.error
    assert outcome.result["status"] == 200
    assert provider.grant_types() == ["authorization_code", "refresh_token"]


def test_tokens_never_in_responses_or_logs(
    app: Any, api: Any, provider: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    conn = create_connection(api, provider)
    answers = [connect(api, provider, conn["id"])]
    gateway = _rest_via_oauth(api, provider, conn["id"])
    provider.revoke_access_token(stored(app, conn["id"]).access_token)
    answers.append(api.get(f"/api/v1/gateway/{gateway['id']}/user"))
    expire(app, conn["id"])
    answers.append(api.post(f"/api/v1/integrations/{conn['id']}/test"))
    for url in (
        f"/api/v1/integrations/{conn['id']}",
        f"/api/v1/integrations/{conn['id']}/oauth",
        f"/api/v1/integrations/{conn['id']}/logs?limit=200",
        f"/api/v1/integrations/{gateway['id']}/logs?limit=200",
        "/api/v1/logs?limit=200",
        "/api/v1/audit-log?limit=200",
        "/api/v1/integrations",
    ):
        answers.append(api.get(url))
        assert answers[-1].status_code == 200, url
    answers.append(api.post(f"/api/v1/integrations/{conn['id']}/oauth/revoke"))
    secrets = {*provider.access, *provider.refresh, CLIENT_SECRET}
    assert len(secrets) >= 5
    text = "\n".join(res.get_data(as_text=True) + json.dumps(dict(res.headers)) for res in answers)
    with app.app_context():
        stored_text = json.dumps(
            [row.event_data for row in IntegrationLog.select()]
            + [row.error_message for row in IntegrationLog.select()]
            + [row.changes for row in AuditLog.select()]
            + [row.payload for row in Event.select()]
        )
    # The provider peer runs in this process: its own server-side logs (authlib's grants log the
    # tokens they issue at DEBUG, werkzeug logs its requests) are the provider's, not ours.
    ours = [r for r in caplog.records if not r.name.startswith(("authlib.oauth2.rfc", "werkzeug"))]
    logged = "\n".join(f"{record.name} {record.getMessage()}" for record in ours)
    assert any(r.name.startswith("switchboard") for r in ours)  # our lines were captured
    # urllib3 stays at INFO or above: its DEBUG lines quote outbound query strings.
    assert not any(r.name.startswith("urllib3") and r.levelname == "DEBUG" for r in ours)
    for secret in secrets:
        assert secret not in text
        assert secret not in stored_text
        assert secret not in logged


def test_connector_context_hands_out_tokens() -> None:
    import requests

    from app.connectors import ConnectorContext, TokenUnavailable

    calls: list[tuple[str, str | None]] = []

    def source(integration_id: str, rejected: str | None) -> str:
        calls.append((integration_id, rejected))
        return "token"

    with requests.Session() as http:
        ctx = ConnectorContext(http=http, integration_id="int_self", tokens=source)
        assert ctx.oauth_token() == "token"
        assert ctx.oauth_token("int_other", rejected="old") == "token"
        assert calls == [("int_self", None), ("int_other", "old")]
        with pytest.raises(TokenUnavailable) as caught:
            ConnectorContext(http=http).oauth_token("int_x")
        assert caught.value.retryable is False


def test_switched_off_connection_lends_no_tokens(app: Any, api: Any, provider: Any) -> None:
    conn = create_connection(api, provider)
    connect(api, provider, conn["id"])
    gateway = _rest_via_oauth(api, provider, conn["id"])
    api.patch(f"/api/v1/integrations/{conn['id']}", json={"status": "inactive"})
    res = api.get(f"/api/v1/gateway/{gateway['id']}/user")
    assert res.status_code == 502 and "switched off" in res.json["detail"]
    assert provider.api_requests == []
    with app.app_context():
        assert tokens.refresh_due(timedelta(days=1)) == 0  # nor refreshes them in the background


def test_absurd_expires_in_is_clamped(app: Any, api: Any, provider: Any) -> None:
    provider.expires_in = 10**15  # beyond what a datetime can hold
    conn = create_connection(api, provider)
    assert connect(api, provider, conn["id"]).status_code == 200
    expires_at = stored(app, conn["id"]).expires_at
    assert expires_at is not None and expires_at > utcnow() + timedelta(days=3650)


def test_the_plugin_guides_oauth_example_runs(httpserver: Any) -> None:
    """docs/plugins.md §7b as written: the token is asked again, as rejected, after a 401."""
    import re
    from pathlib import Path

    import requests

    from app.connectors import ConnectorContext

    guide = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()
    section = guide[guide.index("## 7b.") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)  # noqa: S102 - our own documentation
    stale, fresh = {"Authorization": "Bearer old"}, {"Authorization": "Bearer new"}
    httpserver.expect_request("/user/repos", headers=stale).respond_with_json({}, status=401)
    httpserver.expect_request("/user/repos", headers=fresh).respond_with_json(
        [{"full_name": "o/r"}]
    )
    asked: list[tuple[str, str | None]] = []

    def source(integration_id: str, rejected: str | None) -> str:
        asked.append((integration_id, rejected))
        return "new" if rejected else "old"

    config = {"oauth_integration_id": "int_gh", "api_base_url": httpserver.url_for("").rstrip("/")}
    with requests.Session() as http:
        result = namespace["list_repos"](config, {}, ConnectorContext(http=http, tokens=source))
    assert result == {"repos": ["o/r"]}
    assert asked == [("int_gh", None), ("int_gh", "old")]
