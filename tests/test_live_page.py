"""docs/examples/live-deliveries.html in headless Chromium: deliveries appear as they happen.

The page is served from its own origin (a static server on 127.0.0.1, allowed by CORS), the
stream by the gevent stream service, and deliveries by a real worker to a real receiver; the
browser runs behind the refusing proxy of ``test_docs_ui`` so nothing leaves the machine.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ApiClient
from tests.peers import ROOT, GunicornServer
from tests.test_docs_ui import WAIT_SECONDS, _require_browser, browser, proxy  # noqa: F401

pytestmark = pytest.mark.slow

EXAMPLES = ROOT / "docs" / "examples"


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def page_origin() -> Iterator[str]:
    handler = functools.partial(QuietHandler, directory=str(EXAMPLES))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def services(app: Any, tmp_path: Path, page_origin: str) -> Iterator[str]:
    """API (threaded) and stream service (gevent), both allowing the page's origin."""
    stream = GunicornServer(
        app, tmp_path / "stream.log", options=("-k", "gevent"), SWITCHBOARD_CORS_ORIGINS=page_origin
    )
    stream_base = stream.start()
    api = GunicornServer(
        app,
        tmp_path / "api.log",
        SWITCHBOARD_CORS_ORIGINS=page_origin,
        SWITCHBOARD_STREAM_URL=f"{stream_base}/api/v1/stream",
    )
    try:
        yield api.start()
    finally:
        api.stop()
        stream.stop()


def test_the_example_page_shows_deliveries_arriving_live(
    browser: Any,  # noqa: F811
    services: str,
    page_origin: str,
    api: ApiClient,
    admin_key: str,
    integration: dict[str, Any],
    receiver: Any,
    worker: Any,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_SECONDS)
    assert api.post("/api/v1/event-types", json={"name": "order.paid"}).status_code == 201
    hook = {"url": receiver.url, "events": ["order.paid"], "integration_id": integration["id"]}
    assert api.post("/api/v1/webhooks", json=hook).status_code == 201
    browser.get(f"{page_origin}/live-deliveries.html")
    try:
        field = browser.find_element(By.ID, "api")
        field.clear()
        field.send_keys(services)
        browser.find_element(By.ID, "key").send_keys(admin_key)
        browser.find_element(By.ID, "connect").click()
        wait.until(lambda d: d.find_element(By.ID, "state").text == "connected")
        published = [
            api.post("/api/v1/events", json={"type": "order.paid", "data": {"n": n}}).json["id"]
            for n in range(3)
        ]
        rows = wait.until(
            lambda d: (
                len(d.find_elements(By.CSS_SELECTOR, "#deliveries tr.succeeded")) == 3
                and d.find_elements(By.CSS_SELECTOR, "#deliveries tr.succeeded")
            )
        )
        shown = {row.get_attribute("data-event-id") for row in rows}
        assert shown == set(published)
        assert "order.paid" in rows[0].text and "200" in rows[0].text
    finally:
        browser.save_screenshot(str(tmp_path / "live.png"))
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


def test_the_page_says_what_is_wrong_instead_of_failing_silently(
    browser: Any,  # noqa: F811
    page_origin: str,
    admin_key: str,
) -> None:
    """Opened as a file it explains how to serve it; served, an API it cannot reach is named."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.redis_server import free_port

    wait = WebDriverWait(browser, WAIT_SECONDS)
    nowhere = f"http://127.0.0.1:{free_port()}"

    def connect_to(api: str) -> str:
        field = browser.find_element(By.ID, "api")
        field.clear()
        field.send_keys(api)
        browser.find_element(By.ID, "key").send_keys(admin_key)
        browser.find_element(By.ID, "connect").click()
        return str(wait.until(lambda d: d.find_element(By.ID, "problem").text))

    browser.get((EXAMPLES / "live-deliveries.html").as_uri())
    shown = browser.find_element(By.ID, "problem").text  # before anything is pressed
    assert "opened as a file" in shown and "python3 -m http.server" in shown
    assert "opened as a file" in connect_to(nowhere)

    browser.get(f"{page_origin}/live-deliveries.html")
    assert browser.find_element(By.ID, "problem").text == ""
    shown = connect_to(nowhere)
    assert f"Cannot reach {nowhere}" in shown and page_origin in shown
    assert browser.find_element(By.ID, "state").text == "disconnected"
