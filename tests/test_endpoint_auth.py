"""Endpoint headers and authentication, against real local peers and real workers.

A receiver that checks static headers and Basic/Bearer credentials, authlib's token endpoint
(client credentials) guarding the receiving API, and a TLS server that requires a client
certificate. Secrets are encrypted at rest, redacted on read, kept on update unless they would
go somewhere new, and never land in events or the audit log.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from app.store.db import database
from app.store.models import Delivery, Webhook
from app.store.secretbox import decrypt
from tests.conftest import ApiClient
from tests.oauth_peers import AuthorizationServerPeer
from tests.peers import Received, Receiver, WorkerProcess
from tests.tls_peers import Certificates, MtlsReceiver

HOOKS = "/api/v1/webhooks"
BASIC = "Basic " + base64.b64encode(b"switchboard:s3cret-pass").decode()


def checking(expected: dict[str, str]) -> Receiver:
    """A receiver that answers 401 unless every ``expected`` header is there as given."""

    def respond(req: Received, n: int) -> tuple[int, dict[str, str], bytes]:
        ok = all(req.headers.get(name.lower()) == value for name, value in expected.items())
        return (200, {}, b"ok") if ok else (401, {}, b"who are you?")

    return Receiver(respond)


@pytest.fixture(autouse=True)
def order_type(api: ApiClient) -> None:
    assert api.post("/api/v1/event-types", json={"name": "order.paid"}).status_code == 201


def _hook(api: ApiClient, integration: dict[str, Any], url: str, **extra: Any) -> Any:
    body = {"url": url, "events": ["order.*"], "integration_id": integration["id"], **extra}
    return api.post(HOOKS, json=body)


def _stored(app: Any, webhook_id: str) -> Webhook:
    with app.app_context(), database.connection_context():
        return Webhook.get_by_id(webhook_id)


def test_headers_and_basic_auth_reach_the_receiver_and_stay_secret(
    app: Any, api: ApiClient, integration: dict[str, Any]
) -> None:
    receiver = checking({"Authorization": BASIC, "X-Api-Version": "2", "X-Tenant": "t-9"})
    try:
        created = _hook(
            api,
            integration,
            receiver.url,
            headers=[
                {"name": "X-Api-Version", "value": "2"},
                {"name": "X-Tenant", "value": "t-9", "secret": True},
            ],
            auth={"type": "basic", "username": "switchboard", "password": "s3cret-pass"},
        )
        assert created.status_code == 201, created.json
        hook = created.json
        assert hook["auth"] == {"type": "basic", "username": "switchboard", "password": "********"}
        assert hook["headers"][1] == {"name": "X-Tenant", "value": "********", "secret": True}
        stored = _stored(app, hook["id"])
        with app.app_context():
            assert decrypt(stored.auth["password"]) == "s3cret-pass"
            assert decrypt(stored.headers[1]["value"]) == "t-9"
        assert "s3cret-pass" not in json.dumps(stored.auth)
        assert api.post(f"{HOOKS}/{hook['id']}/test").json["success"] is True
        # An update that leaves the secrets out keeps them.
        patched = api.patch(f"{HOOKS}/{hook['id']}", json={"description": "kept"})
        assert patched.json["auth"]["password"] == "********"
        assert api.post(f"{HOOKS}/{hook['id']}/test").json["success"] is True
        # Sending the redacted values back keeps them too.
        again = api.patch(
            f"{HOOKS}/{hook['id']}", json={"headers": hook["headers"], "auth": hook["auth"]}
        )
        assert again.status_code == 200, again.json
        assert api.post(f"{HOOKS}/{hook['id']}/test").json["success"] is True
        seen = receiver.requests[-1].headers
        assert seen["x-tenant"] == "t-9" and seen["webhook-id"].startswith("msg_")
        everything = json.dumps(
            [api.get("/api/v1/audit-log?limit=100").json, api.get("/api/v1/events").json]
        )
        assert "s3cret-pass" not in everything and "t-9" not in everything
    finally:
        receiver.close()


def test_a_new_url_needs_the_secrets_that_would_travel_to_it(
    api: ApiClient, integration: dict[str, Any]
) -> None:
    first, second = checking({}), checking({"Authorization": "Bearer tok-2", "X-Key": "k2"})
    try:
        hook = _hook(
            api,
            integration,
            first.url,
            headers=[{"name": "X-Key", "value": "k1", "secret": True}],
            auth={"type": "bearer", "token": "tok-1"},
        ).json
        moved = api.patch(f"{HOOKS}/{hook['id']}", json={"url": second.url})
        assert moved.status_code == 422, moved.json
        assert set(moved.json["errors"]) == {"auth.token", "headers.0.value"}
        assert api.get(f"{HOOKS}/{hook['id']}").json["url"] == first.url  # nothing written
        moved = api.patch(
            f"{HOOKS}/{hook['id']}",
            json={
                "url": second.url,
                "auth": {"type": "bearer", "token": "tok-2"},
                "headers": [{"name": "X-Key", "value": "k2", "secret": True}],
            },
        )
        assert moved.status_code == 200, moved.json
        assert api.post(f"{HOOKS}/{hook['id']}/test").json["success"] is True
        # Switching the auth type needs the new type's secrets.
        switched = api.patch(
            f"{HOOKS}/{hook['id']}", json={"auth": {"type": "basic", "username": "u"}}
        )
        assert switched.status_code == 422 and "auth.password" in switched.json["errors"]
        cleared = api.patch(f"{HOOKS}/{hook['id']}", json={"auth": None, "headers": None})
        assert cleared.json["auth"] is None and cleared.json["headers"] is None
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    "extra, place",
    [
        ({"headers": [{"name": "webhook-signature", "value": "x"}]}, "headers.0.name"),
        ({"headers": [{"name": "Host", "value": "evil"}]}, "headers.0.name"),
        ({"headers": [{"name": "Content-Length", "value": "1"}]}, "headers.0.name"),
        ({"headers": [{"name": "Connection", "value": "close"}]}, "headers.0.name"),
        ({"headers": [{"name": "Transfer-Encoding", "value": "chunked"}]}, "headers.0.name"),
        ({"headers": [{"name": "X Bad", "value": "1"}]}, "headers.0.name"),
        (
            {"headers": [{"name": "X-A", "value": "a"}, {"name": "x-a", "value": "b"}]},
            "headers.1.name",
        ),
        ({"headers": [{"name": "X-A", "value": "line\r\nInjected: 1"}]}, "headers.0.value"),
        ({"headers": [{"name": "X-A", "secret": True}]}, "headers.0.value"),
        (
            {
                "headers": [{"name": "Authorization", "value": "x"}],
                "auth": {"type": "bearer", "token": "t"},
            },
            "headers.0.name",
        ),
        ({"auth": {"type": "basic", "username": "a:b", "password": "p"}}, "auth.username"),
        ({"auth": {"type": "bearer"}}, "auth.token"),
        ({"auth": {"type": "bearer", "token": "t", "password": "p"}}, "auth.password"),
        (
            {
                "auth": {
                    "type": "oauth2_client_credentials",
                    "token_url": "http://10.1.2.3/token",
                    "client_id": "c",
                    "client_secret": "s",
                }
            },
            "auth.token_url",
        ),
        ({"auth": {"type": "mtls", "certificate": "x", "private_key": "y"}}, "auth.type"),
    ],
)
def test_bad_headers_and_auth_are_a_422_naming_the_field(
    api: ApiClient, integration: dict[str, Any], receiver: Any, extra: dict[str, Any], place: str
) -> None:
    res = _hook(api, integration, receiver.url, **extra)
    assert res.status_code == 422, res.json
    assert res.content_type == "application/problem+json"
    assert place in res.json["errors"], res.json
    assert api.get(HOOKS).json["total"] == 0


def _publish(api: ApiClient, n: int) -> str:
    res = api.post("/api/v1/events", json={"type": "order.paid", "data": {"n": n}})
    assert res.status_code == 202, res.json
    return str(res.json["id"])


@pytest.fixture()
def authorization_server() -> Any:
    peer = AuthorizationServerPeer("hooks-client", "hooks-secret", "http://unused.test/cb")
    yield peer
    peer.close()


def _oauth_auth(peer: AuthorizationServerPeer, **extra: Any) -> dict[str, Any]:
    return {
        "type": "oauth2_client_credentials",
        "token_url": f"{peer.url}/token",
        "client_id": "hooks-client",
        "client_secret": "hooks-secret",
        "scope": "hooks:write",
        **extra,
    }


def _attempt_errors(app: Any, webhook_id: str) -> list[str | None]:
    with app.app_context(), database.connection_context():
        return [d.last_error for d in Delivery.select().where(Delivery.webhook == webhook_id)]


@pytest.mark.slow
def test_client_credentials_tokens_are_fetched_once_shared_and_refreshed(
    app: Any, api: ApiClient, integration: dict[str, Any], authorization_server: Any
) -> None:
    peer = authorization_server
    peer.token_delay = 0.5  # every sender asks at once: one fetch serves them all
    hook = _hook(
        api,
        integration,
        f"{peer.url}/api/hooks",
        auth=_oauth_auth(peer, token_auth_method="client_secret_post"),
    ).json
    assert hook["auth"]["client_secret"] == "********"
    workers = [WorkerProcess(app), WorkerProcess(app)]
    try:
        sent = [_publish(api, n) for n in range(6)]
        wait_until(lambda: _succeeded(app, hook["id"]) == len(sent), 60)
        assert peer.grant_types() == ["client_credentials"]
        assert peer.token_requests[0]["scope"] == "hooks:write"
        assert len(set(peer.api_requests)) == 1  # every send used the one token
        # The receiver stops accepting it (revoked early): a 401, then a fresh token.
        peer.revoke_access_token(peer.api_requests[0])
        _publish(api, 7)
        wait_until(lambda: _succeeded(app, hook["id"]) == len(sent) + 1, 60)
        assert peer.grant_types() == ["client_credentials"] * 2
        # A failing token endpoint is the delivery's error, retried on the schedule.
        peer.token_outage = True
        api.patch(f"{HOOKS}/{hook['id']}", json={"auth": _oauth_auth(peer, scope="other")})
        _publish(api, 8)
        wait_until(
            lambda: any("token endpoint" in (e or "") for e in _attempt_errors(app, hook["id"])),
            60,
        )
        peer.token_outage = False
        wait_until(lambda: _succeeded(app, hook["id"]) == len(sent) + 2, 60)
    finally:
        for worker in workers:
            worker.stop()


def _succeeded(app: Any, webhook_id: str) -> int:
    with app.app_context(), database.connection_context():
        return (
            Delivery.select()
            .where((Delivery.webhook == webhook_id) & (Delivery.status == "succeeded"))
            .count()
        )


def wait_until(condition: Any, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_refused_token_endpoint_fails_for_good_and_a_new_auth_sends_again(
    app: Any, api: ApiClient, integration: dict[str, Any], authorization_server: Any
) -> None:
    peer = authorization_server
    hook = _hook(api, integration, f"{peer.url}/api/hooks", auth=_oauth_auth(peer)).json
    with app.app_context(), database.connection_context():
        row = Webhook.get_by_id(hook["id"])
        row.auth = {**row.auth, "token_url": "http://10.20.30.40/token"}  # as if saved earlier
        row.save()
    refused = api.post(f"{HOOKS}/{hook['id']}/test").json
    assert refused["success"] is False
    assert "token endpoint destination refused by the outbound guard" in refused["error_message"]
    assert api.post(f"{HOOKS}/{hook['id']}/test").json["success"] is False
    fixed = api.patch(f"{HOOKS}/{hook['id']}", json={"auth": _oauth_auth(peer)})
    assert fixed.status_code == 200, fixed.json
    assert api.post(f"{HOOKS}/{hook['id']}/test").json["success"] is True


@pytest.fixture()
def certificates() -> Certificates:
    return Certificates()


def _mtls(certificates: Certificates, client: Any, **extra: Any) -> dict[str, Any]:
    return {
        "type": "mtls",
        "certificate": client.certificate,
        "private_key": client.private_key,
        "ca_certificate": certificates.ca,
        **extra,
    }


def test_mtls_presents_the_client_certificate_through_a_worker(
    app: Any, api: ApiClient, integration: dict[str, Any], certificates: Certificates
) -> None:
    receiver = MtlsReceiver(certificates)
    client = certificates.issue("switchboard-client", server=False)
    try:
        created = _hook(api, integration, f"{receiver.url}/hooks", auth=_mtls(certificates, client))
        assert created.status_code == 201, created.json
        shown = created.json["auth"]
        assert shown["private_key"] == "********" and shown["certificate"] == client.certificate
        assert shown["certificate_expires_at"].endswith("Z")
        stored = _stored(app, created.json["id"])
        assert "PRIVATE KEY" not in json.dumps(stored.auth)
        assert api.post(f"{HOOKS}/{created.json['id']}/test").json["success"] is True
        worker = WorkerProcess(app)
        try:
            event_id = _publish(api, 1)
            wait_until(
                lambda: any(r.headers.get("webhook-id") == event_id for r in receiver.requests), 30
            )
        finally:
            worker.stop()
        assert {r.client for r in receiver.requests} == {"switchboard-client"}
        # Without the client certificate the receiver refuses the TLS handshake.
        plain = _hook(api, integration, f"{receiver.url}/hooks").json
        failed = api.post(f"{HOOKS}/{plain['id']}/test").json
        assert failed["success"] is False
        # The receiver's thread counts the refusal after the client has already seen it.
        wait_until(lambda: receiver.handshake_failures >= 1, 10)
    finally:
        receiver.close()


def test_mtls_refuses_a_key_that_is_not_the_certificate_s_and_plain_http(
    api: ApiClient, integration: dict[str, Any], certificates: Certificates, receiver: Any
) -> None:
    client, other = (certificates.issue(n, server=False) for n in ("a", "b"))
    mismatched = _mtls(certificates, client, private_key=other.private_key)
    res = _hook(api, integration, "https://127.0.0.1:1/hooks", auth=mismatched)
    assert res.status_code == 422 and "auth.private_key" in res.json["errors"]
    garbage = _mtls(certificates, client, certificate="-----BEGIN CERTIFICATE-----\nnope")
    res = _hook(api, integration, "https://127.0.0.1:1/hooks", auth=garbage)
    assert res.status_code == 422 and "auth.certificate" in res.json["errors"]
    res = _hook(api, integration, receiver.url, auth=_mtls(certificates, client))
    assert res.status_code == 422 and res.json["errors"] == {
        "auth.type": ["mtls needs an https url"]
    }
