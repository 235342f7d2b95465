"""``/docs`` in a real headless Chromium, with no way out of the machine.

Chromium runs with a proxy that refuses everything and records what reached it (loopback is
never proxied, so only the service itself answers), and with every host name but 127.0.0.1
mapped to "not found": nothing can leave the machine. The test renders the operations,
authorizes with a key and runs "Try it out" on ``GET /api/v1/integrations``; then the tab's
own network log shows that the page asked for nothing but 127.0.0.1, and the proxy's record
holds only Chromium's background services (updates, sign-in), never a page request.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from app.web.docs import ASSETS, SWAGGER_UI_VERSION
from tests.peers import GunicornServer

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_SECONDS = 60  # a cold Chromium on a busy 2-core machine
#: Chromium's background services, which no flag fully silences; the page never uses them.
CHROMIUM_SERVICE_DOMAINS = (".google.com", ".googleapis.com", ".gvt1.com", ".duckduckgo.com")


def _browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing (Debian: apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module", autouse=True)
def _require_browser() -> None:
    missing = _browser_missing()
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI must run the browser test: {missing}")
    if missing:
        pytest.skip(missing)


class RefusingProxy:
    """An HTTP proxy on 127.0.0.1 that answers 403 to everything and records each request."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _refuse(self) -> None:
                proxy.requests.append(f"{self.command} {self.path}")
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()

            do_CONNECT = do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _refuse
            do_OPTIONS = _refuse

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def proxy() -> Iterator[RefusingProxy]:
    refusing = RefusingProxy()
    yield refusing
    refusing.close()


@pytest.fixture()
def server(app: Any, tmp_path: Path) -> Iterator[str]:
    gunicorn = GunicornServer(app, tmp_path / "gunicorn.log")
    yield gunicorn.start()
    gunicorn.stop()


@pytest.fixture()
def browser(proxy: RefusingProxy, tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",  # the suite runs as root
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        # Chromium's own services (not the page's) would otherwise knock on the proxy too.
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--disable-extensions",
        "--no-pings",
        "--disable-features=NetworkTimeServiceQuerying,AutofillServerCommunication,"
        "OptimizationHints,Translate,MediaRouter,DialMediaRouteProvider,"
        "CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions,"
        "PreconnectToSearch,AccountConsistency,SigninInterceptBubble",
        "--dns-prefetch-disable",
        "--metrics-recording-only",
        "--window-size=1280,2000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--proxy-server=http://{proxy.address}",  # loopback bypasses it; all else is refused
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {
            "signin.allowed": False,
            "search.suggest_enabled": False,
            "net.network_prediction_options": 2,
        },
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


def _spec_operations(base: str) -> set[str]:
    spec = requests.get(f"{base}/api/v1/openapi.json", timeout=30).json()
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    return {
        f"{m.upper()} {path}" for path, ops in spec["paths"].items() for m in ops if m in methods
    }


def _requested_urls(driver: Any) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_docs_render_authorize_and_try_it_out_without_leaving_the_machine(
    server: str, browser: Any, proxy: RefusingProxy, admin_key: str, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_SECONDS)
    expected = _spec_operations(server)
    browser.get(f"{server}/docs")
    try:
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= len(expected))
        rendered = set(
            browser.execute_script(
                "return [...document.querySelectorAll('.opblock')].map(op =>"
                " op.querySelector('.opblock-summary-method').textContent + ' ' +"
                " op.querySelector('.opblock-summary-path').getAttribute('data-path'))"
            )
        )
        assert rendered == expected
        assert browser.title == "Switchboard API"

        # Authorize: paste the key into the bearer scheme.
        browser.find_element(By.CSS_SELECTOR, "button.authorize").click()
        bearer = wait.until(
            lambda d: next(
                (
                    c
                    for c in d.find_elements(By.CSS_SELECTOR, ".auth-container")
                    if "bearerAuth" in c.text
                ),
                None,
            )
        )
        bearer.find_element(By.CSS_SELECTOR, "input").send_keys(admin_key)
        bearer.find_element(By.CSS_SELECTOR, "button.authorize").click()
        wait.until(lambda d: "Logout" in bearer.text)
        browser.find_element(By.CSS_SELECTOR, "button.btn-done").click()

        # Try it out: GET /api/v1/integrations answers 200 with the key attached.
        operation = browser.find_element(
            By.XPATH,
            "//div[contains(@class, 'opblock-get')]"
            "[.//*[contains(@class, 'opblock-summary-path')][@data-path='/api/v1/integrations']]",
        )
        operation.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
        wait.until(
            ec.element_to_be_clickable(operation.find_element(By.CSS_SELECTOR, ".try-out__btn"))
        )
        operation.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
        wait.until(lambda d: operation.find_elements(By.CSS_SELECTOR, "button.execute"))
        operation.find_element(By.CSS_SELECTOR, "button.execute").click()
        status = wait.until(
            lambda d: operation.find_elements(
                By.CSS_SELECTOR, ".live-responses-table tr.response .response-col_status"
            )
        )
        assert status[0].text.strip() == "200"
        assert '"items"' in operation.find_element(By.CSS_SELECTOR, ".live-responses-table").text
        curl = operation.find_element(By.CSS_SELECTOR, ".curl-command").text
        assert f"Authorization: Bearer {admin_key}" in curl
    finally:
        browser.save_screenshot(str(tmp_path / "docs.png"))

    console = browser.get_log("browser")
    assert [e for e in console if e["level"] == "SEVERE"] == []  # a CSP violation would be here
    urls = _requested_urls(browser)
    assert f"{server}/docs/assets/{SWAGGER_UI_VERSION}/swagger-ui-bundle.js" in urls
    assert any(u.split("?")[0] == f"{server}/api/v1/integrations" for u in urls), urls
    # chrome:// pages (the blank tab Chromium opens first) are built in, not fetched.
    outside = [u for u in urls if not u.startswith((server + "/", "data:", "blob:", "chrome://"))]
    assert outside == [], outside
    # Everything else was refused by the proxy: only Chromium's own services knocked there.
    assert [r for r in proxy.requests if not _chromium_service(r)] == [], proxy.requests


def _chromium_service(request_line: str) -> bool:
    """A request Chromium itself makes (updates, sign-in, search preconnect), not the page."""
    target = request_line.split()[1]
    host = target.split("://")[-1].split("/")[0].split(":")[0]
    return host not in {"fonts.googleapis.com"} and host.endswith(CHROMIUM_SERVICE_DOMAINS)


def test_the_docs_page_names_only_its_own_files(client: Any) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "http" not in page.text  # no absolute URL: nothing from another origin
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    with client.get(f"/docs/assets/{SWAGGER_UI_VERSION}/swagger-ui-bundle.js") as bundle:
        assert bundle.status_code == 200 and "max-age=31536000" in bundle.headers["Cache-Control"]
    assert SWAGGER_UI_VERSION in (ASSETS / "swagger-ui-bundle.js").read_text()
    assert client.get("/docs/assets/5.0.0/swagger-ui-bundle.js").status_code == 404
    assert client.get(f"/docs/assets/{SWAGGER_UI_VERSION}/LICENSE").status_code == 404
    with client.get("/favicon.ico") as icon:
        assert icon.status_code == 200 and icon.data.startswith(b"\x89PNG")
    assert "Apache License" in (ASSETS / "LICENSE").read_text()  # shipped with the copy
