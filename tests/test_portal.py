"""The tenant portal through the Flask test client: portal-session links, every page, the
rules of the API (read-only, CSRF, tenancy), security headers."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import ApiClient, create_github_integration, make_key, make_tenant, make_user


def open_portal(client: Any, api: ApiClient, **body: Any) -> dict[str, Any]:
    """A portal session made through the API, redeemed by ``client`` (the browser)."""
    res = api.post("/api/v1/portal-sessions", json=body)
    assert res.status_code == 201, res.json
    link = urlsplit(res.json["url"])
    page = client.get(f"{link.path}?{link.query}")
    assert page.status_code == 302, page.data
    assert page.headers["Location"].endswith("/portal/endpoints")
    return dict(res.json)


def csrf(page: Any) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.get_data(as_text=True))
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


@pytest.fixture()
def browser(app: Any) -> Any:
    return app.test_client()


@pytest.fixture()
def event_type(api: ApiClient) -> str:
    body = {"name": "order.paid", "description": "An order was paid", "examples": [{"id": 7}]}
    assert api.post("/api/v1/event-types", json=body).status_code == 201
    return "order.paid"


def test_a_link_opens_the_portal_once(browser: Any, api: ApiClient) -> None:
    res = api.post("/api/v1/portal-sessions", json={"expires_in": 600})
    assert res.status_code == 201
    assert set(res.json) >= {"id", "url", "expires_at", "link_expires_at"}
    link = urlsplit(res.json["url"])
    first = browser.get(f"{link.path}?{link.query}")
    assert first.status_code == 302
    cookie = first.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Path=/portal" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # served over plain HTTP here
    again = browser.get(f"{link.path}?{link.query}")
    assert again.status_code == 403 and "already used" in again.get_data(as_text=True)
    assert browser.get("/portal/endpoints").status_code == 200


def test_pages_are_served_with_a_strict_csp(browser: Any, api: ApiClient) -> None:
    open_portal(browser, api)
    res = browser.get("/portal/endpoints")
    policy = res.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert res.headers["X-Content-Type-Options"] == "nosniff"


def test_an_unknown_link_and_no_cookie_get_clear_pages(browser: Any) -> None:
    res = browser.get("/portal/start?token=nonsense")
    assert res.status_code == 403 and "not valid" in res.get_data(as_text=True)
    res = browser.get("/portal/endpoints")
    assert res.status_code == 401 and "session has ended" in res.get_data(as_text=True)


def test_endpoint_lifecycle_through_the_pages(
    browser: Any, api: ApiClient, integration: dict[str, Any], event_type: str, receiver: Any
) -> None:
    open_portal(browser, api)
    form = browser.get("/portal/endpoints/new")
    assert form.status_code == 200 and "An order was paid" in form.get_data(as_text=True)
    token = csrf(form)
    bad = browser.post(
        "/portal/endpoints/new",
        data={"csrf_token": token, "url": "http://169.254.169.254/", "events": [event_type]},
    )
    assert bad.status_code == 422
    created = browser.post(
        "/portal/endpoints/new",
        data={"csrf_token": token, "url": receiver.url, "events": [event_type]},
    )
    assert created.status_code == 201
    assert re.search(r"whsec_[A-Za-z0-9+/=]+", created.get_data(as_text=True))
    hooks = api.get("/api/v1/webhooks").json["items"]
    assert [h["url"] for h in hooks] == [receiver.url]
    hook = hooks[0]["id"]
    detail = browser.get(f"/portal/endpoints/{hook}")
    assert detail.status_code == 200
    disabled = browser.post(f"/portal/endpoints/{hook}/disable", data={"csrf_token": token})
    assert disabled.status_code == 303
    assert api.get(f"/api/v1/webhooks/{hook}").json["status"] == "disabled"
    enabled = browser.post(
        f"/portal/endpoints/{hook}/enable", data={"csrf_token": token, "held": "discard"}
    )
    assert enabled.status_code == 303
    rotated = browser.post(f"/portal/endpoints/{hook}/rotate-secret", data={"csrf_token": token})
    assert rotated.status_code == 200 and "whsec_" in rotated.get_data(as_text=True)
    sent = browser.post(
        "/portal/test-event",
        data={"csrf_token": token, "type": event_type, "payload": '{"id": 1}'},
    )
    assert sent.status_code == 200 and "sent to 1 endpoint" in sent.get_data(as_text=True)
    listed = browser.get(f"/portal/deliveries?webhook={hook}&event_type={event_type}")
    assert listed.status_code == 200 and "data-delivery-id" in listed.get_data(as_text=True)
    delivery = re.search(r'data-delivery-id="(dlv_[^"]+)"', listed.get_data(as_text=True))
    assert delivery
    resent = browser.post(
        f"/portal/deliveries/{delivery.group(1)}/resend",
        data={"csrf_token": token, "webhook": hook},
    )
    assert resent.status_code == 303
    health = browser.get("/portal/health?window=7d")
    assert health.status_code == 200 and "<svg" in health.get_data(as_text=True)
    assert browser.get("/portal/live").status_code == 200
    confirm = browser.get(f"/portal/endpoints/{hook}/delete")
    assert confirm.status_code == 200 and "cannot be undone" in confirm.get_data(as_text=True)
    gone = browser.post(f"/portal/endpoints/{hook}/delete", data={"csrf_token": token})
    assert gone.status_code == 303
    assert api.get("/api/v1/webhooks").json["items"] == []
    audit = api.get("/api/v1/audit-log").json["items"]
    assert any(e["action"] == "webhook.created" for e in audit)


def test_state_changes_need_the_csrf_token(
    browser: Any, api: ApiClient, integration: dict[str, Any], event_type: str
) -> None:
    open_portal(browser, api)
    res = browser.post(
        "/portal/endpoints/new", data={"url": "http://127.0.0.1:9/", "events": [event_type]}
    )
    assert res.status_code == 403 and "could not be verified" in res.get_data(as_text=True)
    assert api.get("/api/v1/webhooks").json["items"] == []


def test_a_read_only_session_changes_nothing(
    browser: Any, api: ApiClient, integration: dict[str, Any], event_type: str, receiver: Any
) -> None:
    hook = api.post(
        "/api/v1/webhooks",
        json={"url": receiver.url, "events": [event_type], "integration_id": integration["id"]},
    ).json["id"]
    open_portal(browser, api, read_only=True)
    page = browser.get(f"/portal/endpoints/{hook}")
    text = page.get_data(as_text=True)
    assert "Read-only" in text and 'id="rotate"' not in text and 'id="save"' not in text
    token = csrf(page)
    for path, data in (
        ("/portal/endpoints/new", {"url": receiver.url, "events": [event_type]}),
        (f"/portal/endpoints/{hook}/disable", {}),
        (f"/portal/endpoints/{hook}/rotate-secret", {}),
        (f"/portal/endpoints/{hook}/delete", {}),
        ("/portal/test-event", {"type": event_type, "payload": "{}"}),
    ):
        res = browser.post(path, data={"csrf_token": token, **data})
        assert res.status_code == 403, path
        assert "read-only" in res.get_data(as_text=True)
    assert api.get(f"/api/v1/webhooks/{hook}").json["status"] == "active"
    assert len(api.get("/api/v1/webhooks").json["items"]) == 1


def test_a_session_never_shows_another_tenants_data(
    app: Any, client: Any, browser: Any, platform: ApiClient, receiver: Any
) -> None:
    tenant_b = make_tenant(app, "acme-b")
    owner = make_user(app, "b@example.com", role="admin", tenant_id=tenant_b.id)
    b_api = ApiClient(client, make_key(app, owner, ["admin"], tenant_id=tenant_b.id))
    b_integration = create_github_integration(b_api)
    assert b_api.post("/api/v1/event-types", json={"name": "b.thing"}).status_code == 201
    b_hook = b_api.post(
        "/api/v1/webhooks",
        json={"url": receiver.url, "events": ["b.thing"], "integration_id": b_integration["id"]},
    ).json["id"]
    open_portal(browser, platform, tenant="default")
    assert b_hook not in browser.get("/portal/endpoints").get_data(as_text=True)
    assert browser.get(f"/portal/endpoints/{b_hook}").status_code == 404
    assert browser.get(f"/portal/deliveries?webhook={b_hook}").status_code == 404
    token = csrf(browser.get("/portal/test-event"))
    for action in ("disable", "rotate-secret", "delete"):
        res = browser.post(f"/portal/endpoints/{b_hook}/{action}", data={"csrf_token": token})
        assert res.status_code == 404, action
    assert b_api.get(f"/api/v1/webhooks/{b_hook}").json["status"] == "active"


def test_who_may_open_sessions_for_which_tenant(
    app: Any, client: Any, api: ApiClient, platform: ApiClient
) -> None:
    tenant_b = make_tenant(app, "acme-b")
    assert platform.post("/api/v1/portal-sessions", json={"tenant": "acme-b"}).status_code == 201
    res = api.post("/api/v1/portal-sessions", json={"tenant": tenant_b.id})
    assert res.status_code == 403
    member = make_user(app, "m@example.com", role="member")
    member_api = ApiClient(client, make_key(app, member, ["webhooks:write"]))
    assert member_api.post("/api/v1/portal-sessions", json={}).status_code == 403
    res = api.post("/api/v1/portal-sessions", json={"expires_in": 5})
    assert res.status_code == 422 and "expires_in" in res.json["errors"]
    res = api.post("/api/v1/portal-sessions", json={"return_url": "https://evil.test/x"})
    assert res.status_code == 422 and "return_url" in res.json["errors"]


def test_a_revoked_session_stops_at_once(browser: Any, api: ApiClient) -> None:
    session = open_portal(browser, api)
    assert browser.get("/portal/endpoints").status_code == 200
    assert api.delete(f"/api/v1/portal-sessions/{session['id']}").status_code == 204
    assert browser.get("/portal/endpoints").status_code == 401
    assert api.delete(f"/api/v1/portal-sessions/{session['id']}x").status_code == 404
    actions = [e["action"] for e in api.get("/api/v1/audit-log").json["items"]]
    assert "portal_session.created" in actions and "portal_session.revoked" in actions


def test_an_expired_link_is_refused(app: Any, browser: Any, api: ApiClient) -> None:
    from datetime import timedelta

    from app.store.db import database
    from app.store.models import ConsoleSession, utcnow

    res = api.post("/api/v1/portal-sessions", json={})
    with app.app_context(), database.connection_context():
        ConsoleSession.update_of(
            "ten_default", link_expires_at=utcnow() - timedelta(seconds=1)
        ).execute()
    link = urlsplit(res.json["url"])
    page = browser.get(f"{link.path}?{link.query}")
    assert page.status_code == 403 and "expired" in page.get_data(as_text=True)


def test_the_theme_comes_from_the_session(browser: Any, api: ApiClient) -> None:
    open_portal(
        browser, api, theme={"accent": "#112233", "logo_url": "https://cdn.example.com/l.png"}
    )
    assert "#112233" in browser.get("/portal/theme.css").get_data(as_text=True)
    assert "https://cdn.example.com/l.png" in browser.get("/portal/endpoints").get_data(
        as_text=True
    )
    res = api.post("/api/v1/portal-sessions", json={"theme": {"accent": "red;}"}})
    assert res.status_code == 422


def test_embedding_settings_shape_the_headers_and_cookie(
    app: Any, browser: Any, api: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(app.config, "PORTAL_FRAME_ANCESTORS", ["https://app.example.com"])
    monkeypatch.setitem(app.config, "PORTAL_COOKIE_SAMESITE", "none")
    res = api.post("/api/v1/portal-sessions", json={})
    link = urlsplit(res.json["url"])
    opened = browser.get(f"{link.path}?{link.query}", base_url="https://sb.example.com")
    cookie = opened.headers["Set-Cookie"]
    assert "SameSite=None" in cookie and "Secure" in cookie  # served over HTTPS
    page = browser.get("/portal/endpoints", base_url="https://sb.example.com")
    assert "frame-ancestors https://app.example.com" in page.headers["Content-Security-Policy"]


def test_a_tenant_s_stored_theme_applies_unless_the_session_overrides_it(
    app: Any, browser: Any, api: ApiClient, platform: ApiClient
) -> None:
    theme = {"portal_theme": {"accent": "#445566", "logo_url": "https://cdn.example.com/t.png"}}
    assert platform.patch("/api/v1/tenants/default", json={"settings": theme}).status_code == 200
    open_portal(browser, api)
    assert "#445566" in browser.get("/portal/theme.css").get_data(as_text=True)
    open_portal(browser, api, theme={"accent": "#778899"})
    assert "#778899" in browser.get("/portal/theme.css").get_data(as_text=True)
    assert "t.png" in browser.get("/portal/endpoints").get_data(as_text=True)


def test_retention_deletes_sessions_a_day_after_they_ended(
    app: Any, browser: Any, api: ApiClient
) -> None:
    from datetime import timedelta

    from app.store.db import database
    from app.store.models import ConsoleSession, utcnow
    from app.store.retention import run_retention

    ended = open_portal(browser, api)
    live = open_portal(browser, api)
    with app.app_context(), database.connection_context():
        ConsoleSession.update_of("ten_default", expires_at=utcnow() - timedelta(days=2)).where(
            ConsoleSession.id == ended["id"]
        ).execute()
        assert run_retention(app.config)["console_sessions"] == 1
        left = [row.id for row in ConsoleSession.of("ten_default")]
    assert left == [live["id"]]


def test_the_live_feed_shows_the_session_tenant_s_attempts_only(
    app: Any, browser: Any, api: ApiClient
) -> None:
    from app.store.db import database
    from app.stream import kinds
    from app.stream.publish import get_publisher

    open_portal(browser, api)
    page = browser.get("/portal/live").get_data(as_text=True)
    after = re.search(r"after=([0-9-]+)", page)
    assert after, "the Live page asks for what arrives after the newest entry"
    with app.app_context(), database.connection_context():
        for tenant, delivery in (("ten_other", "dlv_theirs"), ("ten_default", "dlv_mine")):
            kinds.delivery_attempted(
                tenant_id=tenant,
                delivery_id=delivery,
                event_id="msg_x",
                event_type="order.paid",
                webhook_id="wh_x",
                integration_id="int_x",
                attempt=1,
                status="succeeded",
                status_code=200,
                error=None,
                response_time_ms=12.0,
                next_attempt_at=None,
            )
        get_publisher(app).flush()
    feed = browser.get(f"/portal/live/feed?after={after.group(1)}").get_data(as_text=True)
    assert "dlv_mine" in feed and "dlv_theirs" not in feed
    assert re.search(r'hx-get="/portal/live/feed\?after=\d+-\d+"', feed)  # it asks again


def test_a_suspended_tenant_s_portal_is_closed(app: Any, browser: Any, platform: ApiClient) -> None:
    make_tenant(app, "acme-b")
    open_portal(browser, platform, tenant="acme-b")
    assert browser.get("/portal/endpoints").status_code == 200
    assert platform.post("/api/v1/tenants/acme-b/suspend").status_code == 200
    res = browser.get("/portal/endpoints")
    assert res.status_code == 403 and "not available" in res.get_data(as_text=True)
