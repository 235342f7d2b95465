"""The tenant portal end to end in headless Chromium: a session link from the API, an
endpoint pointing at a local receiver, a test event seen arriving live, a resend, a secret
rotation; a read-only session; a used link. Nothing leaves 127.0.0.1 (the refusing proxy of
``test_docs_ui``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.console_browser import fits_width, no_console_errors, screenshot
from tests.peers import GunicornServer
from tests.test_docs_ui import WAIT_SECONDS, _require_browser, browser, proxy  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture()
def server(app: Any, tmp_path: Path) -> Iterator[str]:
    gunicorn = GunicornServer(app, tmp_path / "gunicorn.log", threads=4)
    yield gunicorn.start()
    gunicorn.stop()


def portal_link(server: str, key: str, **body: Any) -> str:
    res = requests.post(
        f"{server}/api/v1/portal-sessions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert res.status_code == 201, res.text
    return str(res.json()["url"])


def test_a_customer_manages_their_webhooks_in_the_portal(
    browser: Any,  # noqa: F811
    server: str,
    api: Any,
    admin_key: str,
    integration: dict[str, Any],
    receiver: Any,
    worker: Any,
    tmp_path: Path,
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, WAIT_SECONDS, ignored_exceptions=[StaleElementReferenceException])
    browser.set_window_size(1100, 800)  # screenshots of a laptop's screen, kept small
    event_type = {"name": "order.paid", "description": "An order was paid", "examples": [{"id": 7}]}
    assert api.post("/api/v1/event-types", json=event_type).status_code == 201
    link = portal_link(server, admin_key, theme={"accent": "#7a3bd1"})
    browser.get(link)
    wait.until(lambda d: d.current_url.endswith("/portal/endpoints"))
    screenshot(browser, "portal-endpoints-empty", tmp_path)

    browser.find_element(By.ID, "add-endpoint").click()
    wait.until(lambda d: d.find_elements(By.ID, "endpoint-form"))
    browser.find_element(By.ID, "url").send_keys(receiver.url)
    browser.find_element(By.ID, "description").send_keys("Orders service")
    browser.find_element(By.CSS_SELECTOR, 'input[name="events"][value="order.paid"]').click()
    screenshot(browser, "portal-endpoint-form", tmp_path)
    browser.find_element(By.ID, "create").click()
    wait.until(lambda d: d.find_elements(By.ID, "reveal"))
    browser.find_element(By.ID, "reveal").click()
    first_secret = wait.until(lambda d: d.find_element(By.ID, "secret").text)
    assert first_secret.startswith("whsec_")

    # Live in one tab, send a test event from another.
    browser.get(link.split("/portal/")[0] + "/portal/live")
    live_tab = browser.current_window_handle
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#live-rows tr.poll"))
    browser.switch_to.new_window("tab")
    browser.get(link.split("/portal/")[0] + "/portal/test-event")
    Select(browser.find_element(By.ID, "type")).select_by_value("order.paid")
    browser.find_element(By.ID, "send").click()
    sent = wait.until(lambda d: d.find_elements(By.ID, "sent") and d.find_element(By.ID, "sent"))
    event_id = sent.find_element(By.TAG_NAME, "code").text
    screenshot(browser, "portal-test-event", tmp_path)
    browser.close()
    browser.switch_to.window(live_tab)
    row = wait.until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f'#live-rows tr[data-event-id="{event_id}"]')
    )[0]
    wait.until(lambda d: "succeeded" in row.get_attribute("class"))
    screenshot(browser, "portal-live", tmp_path)
    receiver.wait_for(lambda got: len(got) >= 1, timeout=WAIT_SECONDS)

    browser.find_element(By.LINK_TEXT, "Deliveries").click()
    wait.until(lambda d: "/portal/deliveries" in d.current_url)
    resend = wait.until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-event-id="{event_id}"] .resend')
    )
    screenshot(browser, "portal-deliveries", tmp_path)
    resend[0].click()
    wait.until(
        lambda d: d.find_elements(By.ID, "done") and "Resent" in d.find_element(By.ID, "done").text
    )
    received = receiver.wait_for(lambda got: len(got) >= 2, timeout=WAIT_SECONDS)
    assert {r.headers["webhook-id"] for r in received} == {event_id}  # the same event again

    browser.find_element(By.LINK_TEXT, "Endpoints").click()
    wait.until(lambda d: d.find_elements(By.PARTIAL_LINK_TEXT, receiver.url))[0].click()
    wait.until(lambda d: d.find_elements(By.ID, "rotate"))
    screenshot(browser, "portal-endpoint", tmp_path)
    browser.find_element(By.ID, "rotate").click()
    wait.until(lambda d: d.find_elements(By.ID, "reveal"))[0].click()
    second_secret = wait.until(lambda d: d.find_element(By.ID, "secret").text)
    assert second_secret.startswith("whsec_") and second_secret != first_secret

    browser.find_element(By.LINK_TEXT, "Health").click()
    wait.until(lambda d: "/portal/health" in d.current_url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "section.health svg rect"))
    screenshot(browser, "portal-health", tmp_path)
    browser.set_window_size(375, 900)
    for page in ("endpoints", "deliveries", "health"):
        browser.get(link.split("/portal/")[0] + f"/portal/{page}")
        assert fits_width(browser, 375), page
    screenshot(browser, "portal-health-375px", tmp_path)
    no_console_errors(browser)


def test_a_read_only_session_and_a_used_link(
    browser: Any,  # noqa: F811
    server: str,
    api: Any,
    admin_key: str,
    integration: dict[str, Any],
    receiver: Any,
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_SECONDS, ignored_exceptions=[StaleElementReferenceException])
    assert api.post("/api/v1/event-types", json={"name": "order.paid"}).status_code == 201
    hook = api.post(
        "/api/v1/webhooks",
        json={"url": receiver.url, "events": ["order.paid"], "integration_id": integration["id"]},
    ).json["id"]
    link = portal_link(server, admin_key, read_only=True)
    browser.get(link)
    wait.until(lambda d: d.find_elements(By.ID, "read-only"))
    assert not browser.find_elements(By.ID, "add-endpoint")
    browser.find_element(By.PARTIAL_LINK_TEXT, receiver.url).click()
    wait.until(lambda d: d.find_elements(By.ID, "endpoint-form"))
    assert not browser.find_elements(By.ID, "rotate")
    assert not browser.find_elements(By.ID, "save")
    assert browser.find_element(By.ID, "url").get_attribute("disabled")

    browser.get(link)  # the same link again
    problem = wait.until(lambda d: d.find_element(By.ID, "problem").text)
    assert "already used" in problem
    assert api.get(f"/api/v1/webhooks/{hook}").json["status"] == "active"
    no_console_errors(browser, refused=link)
