"""The operator console in headless Chromium: an admin signs in and walks the five tabs,
switches tenant, opens a tenant's portal; a tenant admin gets no Multi-Tenancy tab. Nothing
leaves 127.0.0.1 (the refusing proxy of ``test_docs_ui``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.console_browser import fits_width, no_console_errors, screenshot
from tests.peers import GunicornServer
from tests.test_docs_ui import WAIT_SECONDS, _require_browser, browser, proxy  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture()
def server(app: Any, tmp_path: Path) -> Iterator[str]:
    gunicorn = GunicornServer(app, tmp_path / "gunicorn.log", threads=4)
    yield gunicorn.start()
    gunicorn.stop()


def sign_in(driver: Any, server: str, email: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{server}/console/")
    WebDriverWait(driver, WAIT_SECONDS).until(lambda d: d.find_elements(By.ID, "login-form"))
    driver.find_element(By.ID, "email").send_keys(email)
    driver.find_element(By.ID, "password").send_keys("correct horse")
    driver.find_element(By.ID, "sign-in").click()
    WebDriverWait(driver, WAIT_SECONDS).until(lambda d: d.find_elements(By.ID, "ready"))


def test_an_operator_walks_the_console(
    browser: Any,  # noqa: F811
    server: str,
    platform: Any,
    operator_user: Any,
    receiver: Any,
    tmp_path: Path,
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, WAIT_SECONDS, ignored_exceptions=[StaleElementReferenceException])
    browser.set_window_size(1100, 800)  # screenshots of a laptop's screen, kept small
    acme = platform.post("/api/v1/tenants", json={"name": "Acme", "external_id": "acme"}).json
    as_acme = {"Switchboard-Tenant": acme["id"]}
    integration = platform.post(
        "/api/v1/integrations",
        json={
            "name": "orders-api",
            "type": "api",
            "provider": "rest",
            "status": "active",
            "config": {"upstreams": [{"url": receiver.url}]},
        },
        headers=as_acme,
    ).json
    assert platform.post("/api/v1/event-types", json={"name": "order.paid"}, headers=as_acme)
    hook = platform.post(
        "/api/v1/webhooks",
        json={"url": receiver.url, "events": ["order.paid"], "integration_id": integration["id"]},
        headers=as_acme,
    ).json

    browser.get(f"{server}/console/login")
    screenshot(browser, "console-sign-in", tmp_path)
    sign_in(browser, server, "operator@example.com")
    screenshot(browser, "console-overview", tmp_path)
    wait.until(lambda d: d.find_elements(By.LINK_TEXT, "SSO"))[0].click()
    wait.until(lambda d: d.find_elements(By.ID, "logins"))
    assert "console.login" in browser.find_element(By.ID, "logins").text
    screenshot(browser, "console-sso", tmp_path)

    wait.until(lambda d: d.find_elements(By.ID, "logins") and "/sso" in d.current_url)
    browser.find_element(By.LINK_TEXT, "Multi-Tenancy").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'section[data-id="{acme["id"]}"]'))
    screenshot(browser, "console-tenants", tmp_path)

    Select(browser.find_element(By.ID, "tenant-switch")).select_by_value(acme["id"])
    browser.find_element(By.CSS_SELECTOR, "form.switcher button").click()
    wait.until(lambda d: f"tenant={acme['id']}" in d.current_url)
    browser.find_element(By.LINK_TEXT, "Webhooks").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-id="{hook["id"]}"]'))
    assert f"tenant={acme['id']}" in browser.current_url  # a shareable URL of the view
    screenshot(browser, "console-webhooks", tmp_path)
    browser.back()
    wait.until(lambda d: "/console/tenants" in d.current_url)

    browser.get(f"{server}/console/gateway?tenant={acme['id']}")
    wait.until(lambda d: "orders-api" in d.find_element(By.TAG_NAME, "main").text)
    assert "healthy" in browser.find_element(By.CSS_SELECTOR, "ul.upstreams").text
    screenshot(browser, "console-gateway", tmp_path)

    browser.get(f"{server}/console/tenants")
    browser.find_element(
        By.CSS_SELECTOR, f'section[data-id="{acme["id"]}"] button.open-portal'
    ).click()
    wait.until(lambda d: d.current_url.endswith("/portal/endpoints"))
    assert hook["url"] in browser.find_element(By.ID, "endpoints").text

    browser.set_window_size(375, 900)
    for page in ("", "sso", "tenants", "gateway", "webhooks/endpoints"):
        browser.get(f"{server}/console/{page}")
        assert fits_width(browser, 375), page
    screenshot(browser, "console-375px", tmp_path)
    no_console_errors(browser)


def test_a_tenant_admin_gets_their_tenant_only(
    browser: Any,  # noqa: F811
    server: str,
    admin_user: Any,
) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, server, "admin@example.com")
    tabs = browser.find_element(By.CSS_SELECTOR, "nav.tabs").text
    assert "Overview" in tabs and "API Gateway" in tabs and "Multi-Tenancy" not in tabs
    browser.get(f"{server}/console/tenants")
    assert "no such page" in browser.find_element(By.ID, "problem").text
    browser.get(f"{server}/console/webhooks/endpoints?tenant=ten_default")
    assert browser.find_elements(By.ID, "who")  # the parameter is ignored, not an error
    no_console_errors(browser, refused=f"{server}/console/tenants")
