"""Security hardening of keys and logins (issue 10): child-key bounds, lock-out, quota."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from app import create_app
from tests.conftest import ApiClient, make_key, make_user

KEYS = "/api/v1/api-keys"


def _restricted_creator(app: Any, client: Any) -> tuple[ApiClient, datetime]:
    expiry = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    member = make_user(app, "restricted@example.com")
    key = make_key(
        app,
        member,
        ["keys:write", "logs:read"],
        allowed_ips=["127.0.0.1/32"],
        rate_limit=10,
        expires_at=expiry.replace(tzinfo=None),
    )
    return ApiClient(client, key), expiry


def test_restricted_key_cannot_mint_an_unrestricted_child(app, client):
    creator, expiry = _restricted_creator(app, client)
    later = (expiry + timedelta(days=1)).isoformat()
    for body, field in (
        ({"allowed_ips": ["0.0.0.0/0"]}, "allowed_ips"),
        ({"allowed_ips": ["127.0.0.0/8"]}, "allowed_ips"),
        ({"rate_limit": 100_000_000}, "rate_limit"),
        ({"rate_limit": 11}, "rate_limit"),
        ({"expires_at": later}, "expires_at"),
    ):
        res = creator.post(KEYS, json={"name": "child", "permissions": ["logs:read"], **body})
        assert res.status_code == 422, (body, res.json)
        assert res.content_type == "application/problem+json"
        assert field in res.json["errors"]["json"], res.json
    wider = creator.post(KEYS, json={"name": "child", "permissions": ["integrations:read"]})
    assert wider.status_code == 403 and wider.json["missing_scopes"] == ["integrations:read"]


def test_child_of_restricted_key_inherits_its_limits(app, client):
    creator, expiry = _restricted_creator(app, client)
    res = creator.post(KEYS, json={"name": "child", "permissions": ["logs:read"]})
    assert res.status_code == 201, res.json
    child = res.json
    assert child["allowed_ips"] == ["127.0.0.1/32"]
    assert child["rate_limit"] == 10
    assert datetime.fromisoformat(child["expires_at"].replace("Z", "+00:00")) == expiry
    within = creator.post(
        KEYS,
        json={
            "name": "narrower",
            "permissions": ["logs:read"],
            "allowed_ips": ["127.0.0.1"],
            "rate_limit": 3,
            "expires_at": (expiry - timedelta(hours=1)).isoformat(),
        },
    )
    assert within.status_code == 201, within.json
    assert within.json["rate_limit"] == 3


def test_a_login_session_passes_on_its_expiry_unless_a_longer_one_is_asked_for(app, client):
    """Issue 24 item 12: a 24 h session key no longer mints never-expiring keys by default; a
    key that outlives the session is asked for explicitly and audited."""
    make_user(app, "ui@example.com", role="admin", password="ui-password")
    login = client.post(
        "/api/v1/auth/login", json={"email": "ui@example.com", "password": "ui-password"}
    )
    session = ApiClient(client, login.json["key"])
    res = session.post(KEYS, json={"name": "scratch", "permissions": ["logs:read"]})
    assert res.status_code == 201 and res.json["expires_at"] == login.json["expires_at"]
    later = (datetime.now(UTC) + timedelta(days=90)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for name, expires_at in (("ci", None), ("quarter", later)):
        body = {"name": name, "permissions": ["logs:read"], "expires_at": expires_at}
        res = session.post(KEYS, json=body)
        assert res.status_code == 201, res.json
        assert res.json["expires_at"] == expires_at
    audit = session.get("/api/v1/audit-log", query_string={"action": "api_key.outlives_session"})
    entries = audit.json["items"]
    assert sorted(e["changes"]["expires_at"] or "never" for e in entries) == sorted(
        ["never", later]
    )
    assert {e["changes"]["session_key_id"] for e in entries} == {login.json["key_id"]}


WHOAMI = "/api/v1/auth/whoami"


def test_known_prefix_cannot_lock_a_key_out_on_any_worker(app, admin_user):
    victim = make_key(app, admin_user, ["logs:read"])
    first, second = app.test_client(), create_app(dict(app.config)).test_client()
    assert ApiClient(first, victim).get(WHOAMI).status_code == 200  # used once, on one worker
    forged = victim[:16] + "x" * 32
    codes = [first.get(WHOAMI, headers={"X-API-Key": forged}).status_code for _ in range(11)]
    assert codes == [401] * 10 + [429]  # the bcrypt work for wrong secrets stays throttled
    # The correct secret keeps working from the same address, on this and on a fresh worker.
    assert ApiClient(first, victim).get(WHOAMI).status_code == 200
    assert ApiClient(second, victim).get(WHOAMI).status_code == 200
    assert second.get(WHOAMI, headers={"X-API-Key": forged}).status_code == 429


def test_rotated_out_secret_does_not_spend_the_quota(app, api, client, admin_user):
    created = api.post(KEYS, json={"name": "tight", "rate_limit": 3}).json
    old = ApiClient(client, created["key"])
    assert old.get(WHOAMI).status_code == 200  # cached in this process
    rotated = api.post(f"{KEYS}/{created['id']}/rotate", json={"grace_period_seconds": 0})
    assert rotated.status_code == 200
    assert [old.get(WHOAMI).status_code for _ in range(5)] == [401] * 5
    new = ApiClient(client, rotated.json["key"])
    assert [new.get(WHOAMI).status_code for _ in range(3)] == [200, 200, 429]


def test_hammering_an_account_does_not_lock_out_its_owner(app, client):
    make_user(app, "victim@example.com", password="the-right-one")
    login = "/api/v1/auth/login"
    right = {"email": "victim@example.com", "password": "the-right-one"}
    first = client.post(login, json=right)
    assert first.status_code == 201 and first.json["device_token"]
    device = first.json["device_token"]
    wrong = {"email": "victim@example.com", "password": "guess"}
    assert [client.post(login, json=wrong).status_code for _ in range(11)] == [401] * 10 + [429]
    assert client.post(login, json=right).status_code == 429  # an unknown client stays throttled
    # The owner's client, from the same (shared) address, still logs in.
    again = client.post(login, json={**right, "device_token": device})
    assert again.status_code == 201, again.json
    # A device token is bound to its user (elsewhere the address stays throttled), and guessing
    # through it is throttled too.
    make_user(app, "other@example.com", password="other-pass")
    other = {"email": "other@example.com", "password": "other-pass", "device_token": device}
    assert client.post(login, json=other).status_code == 429
    guesses = [client.post(login, json={**wrong, "device_token": device}) for _ in range(11)]
    assert [res.status_code for res in guesses] == [401] * 10 + [429]


def test_one_bcrypt_check_for_a_cold_key_presented_by_many_threads_at_once(monkeypatch):
    """Thirty-two connections arriving with the same not-yet-verified key wait for one check."""
    import threading
    import time

    from app.auth import keys

    hashed = keys.hash_secret("sb_live_" + "a" * 40, rounds=4)
    calls: list[int] = []
    real = keys.check_secret

    def slow_check(secret: str, stored: str) -> bool:
        calls.append(1)
        time.sleep(0.2)  # bcrypt at cost 12 takes about this long
        return real(secret, stored)

    monkeypatch.setattr(keys, "check_secret", slow_check)
    cache = keys.VerifiedKeyCache(ttl=60)
    barrier, results = threading.Barrier(32), []

    def present(secret: str) -> None:
        barrier.wait()
        results.append(cache.verify(secret, hashed))

    threads = [threading.Thread(target=present, args=("sb_live_" + "a" * 40,)) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 32 and len(calls) == 1
    # A wrong secret is checked (and refused) every time: nothing is remembered for it.
    assert not cache.verify("sb_live_" + "b" * 40, hashed)
    assert not cache.verify("sb_live_" + "b" * 40, hashed)
    assert len(calls) == 3 and cache._flights == {}
