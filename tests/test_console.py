"""The operator console through the Flask test client: sign-in, the five tabs, the tenant
switcher, what a tenant admin may not see, confirmations before destructive changes."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from tests.conftest import ApiClient, create_github_integration, make_key, make_tenant, make_user
from tests.test_sso import create_sso, idp  # noqa: F401


def sign_in(browser: Any, email: str, password: str = "correct horse") -> Any:
    return browser.post("/console/login", data={"email": email, "password": password})


def csrf(page: Any) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.get_data(as_text=True))
    assert found
    return found.group(1)


@pytest.fixture()
def browser(app: Any) -> Any:
    return app.test_client()


def test_sign_in_is_for_admins_with_the_right_password(
    app: Any, browser: Any, admin_user: Any
) -> None:
    assert browser.get("/console/").status_code == 303  # to the sign-in page
    wrong = sign_in(browser, "admin@example.com", "nope")
    assert wrong.status_code == 401 and "Wrong email or password" in wrong.get_data(as_text=True)
    make_user(app, "member@example.com", role="member")
    member = sign_in(browser, "member@example.com")
    assert member.status_code == 403 and "for admins" in member.get_data(as_text=True)
    res = sign_in(browser, "admin@example.com")
    assert res.status_code == 303
    cookie = res.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Path=/console" in cookie and "SameSite=Strict" in cookie
    page = browser.get("/console/")
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    text = page.get_data(as_text=True)
    assert "Multi-Tenancy" not in text  # a tenant admin's console
    assert browser.get("/console/tenants").status_code == 404
    for tab in ("/console/sso", "/console/webhooks/endpoints", "/console/gateway"):
        assert browser.get(tab).status_code == 200, tab
    assert browser.post("/console/logout").status_code == 403  # no CSRF token
    assert browser.post("/console/logout", data={"csrf_token": csrf(page)}).status_code == 303
    assert browser.get("/console/").status_code == 303


def test_a_cross_site_sign_in_is_refused(browser: Any, admin_user: Any) -> None:
    res = browser.post(
        "/console/login",
        data={"email": "admin@example.com", "password": "correct horse"},
        headers={"Origin": "https://evil.example"},
    )
    assert res.status_code == 403 and "Set-Cookie" not in res.headers


def test_operators_switch_tenants_and_manage_them(
    app: Any, client: Any, browser: Any, operator_user: Any, receiver: Any
) -> None:
    tenant_b = make_tenant(app, "acme-b", name="Acme B")
    owner = make_user(app, "b@example.com", role="admin", tenant_id=tenant_b.id)
    b_api = ApiClient(client, make_key(app, owner, ["admin"], tenant_id=tenant_b.id))
    b_integration = create_github_integration(b_api)
    assert b_api.post("/api/v1/event-types", json={"name": "b.thing"}).status_code == 201
    b_hook = b_api.post(
        "/api/v1/webhooks",
        json={"url": receiver.url, "events": ["b.thing"], "integration_id": b_integration["id"]},
    ).json["id"]
    assert sign_in(browser, "operator@example.com").status_code == 303
    overview = browser.get("/console/")
    assert overview.status_code == 200 and "Multi-Tenancy" in overview.get_data(as_text=True)
    assert "Acme B" in overview.get_data(as_text=True)  # the switcher
    assert b_hook not in browser.get("/console/webhooks/endpoints").get_data(as_text=True)
    theirs = browser.get(f"/console/webhooks/endpoints?tenant={tenant_b.id}")
    assert b_hook in theirs.get_data(as_text=True)
    detail = browser.get(f"/console/webhooks/endpoints/{b_hook}?tenant={tenant_b.id}")
    assert detail.status_code == 200
    assert browser.get(f"/console/webhooks/endpoints/{b_hook}").status_code == 404
    tenants = browser.get("/console/tenants")
    assert tenants.status_code == 200 and "<svg" in tenants.get_data(as_text=True)
    token = csrf(tenants)
    res = browser.post(f"/console/tenants/{tenant_b.id}/suspend", data={"csrf_token": token})
    assert res.status_code == 303
    assert b_api.get("/api/v1/webhooks").status_code == 403  # suspended
    browser.post(f"/console/tenants/{tenant_b.id}/resume", data={"csrf_token": token})
    assert b_api.get("/api/v1/webhooks").status_code == 200
    portal = browser.post(f"/console/tenants/{tenant_b.id}/portal", data={"csrf_token": token})
    assert portal.status_code == 303 and "/portal/start?token=" in portal.headers["Location"]
    confirm = browser.get(f"/console/tenants/{tenant_b.id}/delete")
    assert confirm.status_code == 200 and "cannot be undone" in confirm.get_data(as_text=True)
    wrong = browser.post(
        f"/console/tenants/{tenant_b.id}/delete", data={"csrf_token": token, "confirm": "x"}
    )
    assert wrong.status_code == 422
    gone = browser.post(
        f"/console/tenants/{tenant_b.id}/delete", data={"csrf_token": token, "confirm": "acme-b"}
    )
    assert gone.status_code == 303
    status = ApiClient(client, make_key(app, operator_user, ["admin"], platform=True))
    assert status.get(f"/api/v1/tenants/{tenant_b.id}").json["status"] == "deleting"


def test_the_tabs_show_what_they_promise(
    browser: Any, api: ApiClient, admin_user: Any, integration: dict[str, Any], receiver: Any
) -> None:
    assert api.post("/api/v1/event-types", json={"name": "order.paid"}).status_code == 201
    hook = {"url": receiver.url, "events": ["order.paid"], "integration_id": integration["id"]}
    assert api.post("/api/v1/webhooks", json=hook).status_code == 201
    gateway = api.post(
        "/api/v1/integrations",
        json={
            "name": "orders-api",
            "type": "api",
            "provider": "rest",
            "status": "active",
            "config": {"upstreams": [{"url": receiver.url}]},
        },
    ).json
    assert api.get(f"/api/v1/gateway/{gateway['id']}/ping").status_code == 200
    assert sign_in(browser, "admin@example.com").status_code == 303
    overview = browser.get("/console/").get_data(as_text=True)
    assert 'id="ready"' in overview and "Events per minute" in overview
    sso = browser.get("/console/sso").get_data(as_text=True)
    assert "console.login" in sso  # the sign-in just made, from the audit log
    deadline = time.monotonic() + 30  # the gateway writes its log rows off the request path
    text = browser.get("/console/gateway").get_data(as_text=True)
    while "GET /ping" not in text and time.monotonic() < deadline:
        time.sleep(0.1)
        text = browser.get("/console/gateway").get_data(as_text=True)
    assert "orders-api" in text and receiver.url in text and "healthy" in text
    assert "GET /ping" in text
    assert "test key" in text  # the admin's key, with its usage chart


def test_an_admin_signs_in_with_sso(app: Any, api: ApiClient, idp: Any) -> None:  # noqa: F811
    from urllib.parse import parse_qs, urlsplit

    from tests.oauth_peers import follow_authorization

    sso = create_sso(api, idp, default_role="admin")
    public = app.config["PUBLIC_URL"]
    browser = app.test_client()
    start = browser.get("/console/sso-start?email=ada@example.com", base_url=public)
    assert start.status_code == 303
    login = urlsplit(start.headers["Location"])
    assert login.path == f"/api/v1/auth/sso/{sso['id']}/login"
    to_idp = browser.get(f"{login.path}?{login.query}", base_url=public)
    callback, _ = follow_authorization(to_idp.headers["Location"])
    back = browser.get(callback, base_url=public)
    target = urlsplit(back.headers["Location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{public}/console/sso-return"
    page = browser.get(target.path, base_url=public)
    assert page.status_code == 200 and "console-sso.js" in page.get_data(as_text=True)
    key = parse_qs(target.fragment)["key"][0]
    signed_in = browser.post(target.path, data={"key": key}, base_url=public)
    assert signed_in.status_code == 303 and "sb_console=" in signed_in.headers["Set-Cookie"]
    assert browser.get("/console/", base_url=public).status_code == 200
    tab = browser.get("/console/sso", base_url=public)
    assert "company login" in tab.get_data(as_text=True)
    assert "auth.sso_login" in tab.get_data(as_text=True)  # the sign-in, from the audit log
    tested = browser.post(
        "/console/sso",
        data={"csrf_token": csrf(tab), "integration_id": sso["id"]},
        base_url=public,
    )
    assert tested.status_code == 200 and "passed" in tested.get_data(as_text=True)
    assert ApiClient(api.client, key).get("/api/v1/auth/whoami").status_code == 401  # traded in
    again = browser.post(target.path, data={"key": key}, base_url=public)
    assert again.status_code == 401
    unknown = browser.get("/console/sso-start?email=bob@nowhere.test", base_url=public)
    assert unknown.status_code == 404 and "No SSO sign-in" in unknown.get_data(as_text=True)
