"""Every Python example of docs/plugins.md runs in a test, against local peers only: the short
form's Teams and PagerDuty connectors (within their line budgets), the Teams tests as a plugin
repository runs them, and the OAuth2 example of section 7b."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pytest_httpserver import HTTPServer

from app.connectors import ActionError, ConnectorContext, EventSpec, secret_paths
from app.connectors.hookspecs import hookimpl
from app.connectors.registry import PluginRegistry
from app.connectors.testing import LOOPBACK, PluginHarness
from app.outbound.guard import make_session

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "plugins.md").read_text()
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
#: A block that only shows a signature: test_connector_units checks it against the code.
SIGNATURE = re.compile(r"def \w+\(.*\) -> .+:")

TEAMS = "`src/switchboard_teams/__init__.py`:"
TEAMS_TESTS = "`tests/test_teams.py`"
PAGERDUTY = "`src/switchboard_pagerduty/__init__.py`:"
OAUTH = "asks the context for a token on every"
EVENT_SPEC = "Give a type a payload schema and examples"
#: The line that introduces each example -> the test that runs it.
EXAMPLES = {
    TEAMS: "test_the_teams_notifier_passes_its_tests_in_30_lines",
    TEAMS_TESTS: "test_the_teams_notifier_passes_its_tests_in_30_lines",
    PAGERDUTY: "the PagerDuty tests below",
    OAUTH: "test_the_oauth_example_refreshes_a_rejected_token_once",
    EVENT_SPEC: "test_the_event_spec_example_puts_its_schema_in_the_catalog",
    "`src/switchboard_acme/__init__.py`:": "test_plugin_authoring.py (the full form's package)",
    "`tests/test_acme.py`:": "test_plugin_authoring.py (the full form's package)",
}


def _block_after(marker: str) -> str:
    """The first Python block that follows ``marker`` in the guide."""
    match = BLOCK.search(GUIDE, GUIDE.index(marker))
    assert match is not None, marker
    return match.group(1)


def _module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, f"docs/plugins.md ({name})", "exec"), module.__dict__)  # noqa: S102
    return module


def test_every_python_example_in_the_guide_is_run_by_a_test() -> None:
    run = {_block_after(marker) for marker in EXAMPLES}
    unrun = [
        block.splitlines()[0]
        for block in BLOCK.findall(GUIDE)
        if block not in run and not SIGNATURE.fullmatch(block.strip())
    ]
    assert unrun == [], "examples in docs/plugins.md that no test runs (add them to EXAMPLES)"


# --- Microsoft Teams -------------------------------------------------------------------------


def test_the_teams_notifier_passes_its_tests_in_30_lines(tmp_path: Path) -> None:
    """The module and its tests as a plugin repository: pytest in a subprocess."""
    module = _block_after(TEAMS)
    assert len(module.splitlines()) <= 30, "the Teams example's budget is 30 lines"
    package = tmp_path / "src" / "switchboard_teams"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(module)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_teams.py").write_text(_block_after(TEAMS_TESTS))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "src"), str(ROOT)])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^6 passed", run.stdout, re.M), run.stdout


def test_the_teams_notifier_calls_with_a_timeout() -> None:
    """The documented 10 s: what reaches the session, without waiting for a slow peer."""
    teams = _module("switchboard_teams", _block_after(TEAMS)).Teams()
    seen: list[Any] = []

    class Recording(requests.Session):
        def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(kwargs.get("timeout"))
            raise requests.ConnectTimeout("no peer")

    ctx = ConnectorContext(http=Recording())
    with pytest.raises(ActionError) as failed:
        teams.actions["send_message"].handler(
            {"webhook_url": "https://teams.example/hook/SECRET"}, {"text": "x"}, ctx
        )
    assert seen == [10.0]
    assert (failed.value.message, failed.value.retryable) == (
        "teams did not answer within 10 s",
        True,
    )


# --- PagerDuty -------------------------------------------------------------------------------

ROUTING_KEY = "R" * 32


@pytest.fixture()
def pagerduty() -> Iterator[PluginHarness]:
    source = _block_after(PAGERDUTY)
    assert len(source.splitlines()) <= 45, "the PagerDuty example's budget is 45 lines"
    with PluginHarness(_module("switchboard_pagerduty", source), name="pagerduty") as harness:
        yield harness


def _config(httpserver: HTTPServer) -> dict[str, str]:
    return {"routing_key": ROUTING_KEY, "api_url": httpserver.url_for("").rstrip("/")}


def test_pagerduty_triggers_and_resolves(pagerduty: PluginHarness, httpserver: HTTPServer) -> None:
    accepted = {"status": "success", "message": "Event processed", "dedup_key": "disk-db-1"}
    trigger = {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "payload": {"summary": "Disk full", "source": "db-1", "severity": "error"},
        "dedup_key": "disk-db-1",
    }
    httpserver.expect_oneshot_request("/v2/enqueue", method="POST", json=trigger).respond_with_json(
        accepted, status=202
    )
    alert = {"summary": "Disk full", "source": "db-1", "dedup_key": "disk-db-1"}
    opened = pagerduty.run_action("trigger", _config(httpserver), alert)
    assert opened.success and opened.result == {"status": "success", "dedup_key": "disk-db-1"}
    resolve = {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "disk-db-1"}
    httpserver.expect_oneshot_request("/v2/enqueue", method="POST", json=resolve).respond_with_json(
        accepted, status=202
    )
    closed = pagerduty.run_action("resolve", _config(httpserver), {"dedup_key": "disk-db-1"})
    assert closed.success
    untracked = {**trigger, "payload": {**trigger["payload"], "severity": "critical"}}
    del untracked["dedup_key"]
    httpserver.expect_oneshot_request(
        "/v2/enqueue", method="POST", json=untracked
    ).respond_with_json({**accepted, "dedup_key": "generated"}, status=202)
    fresh = {"summary": "Disk full", "source": "db-1", "severity": "critical"}
    assert pagerduty.run_action("trigger", _config(httpserver), fresh).result == {
        "status": "success",
        "dedup_key": "generated",
    }
    httpserver.check_assertions()


def test_pagerduty_failures_follow_the_policy(
    pagerduty: PluginHarness, httpserver: HTTPServer
) -> None:
    invalid = {"status": "invalid event", "message": "Event object is invalid", "errors": ["x"]}
    httpserver.expect_oneshot_request("/v2/enqueue").respond_with_json(invalid, status=400)
    httpserver.expect_oneshot_request("/v2/enqueue").respond_with_data(
        "", status=429, headers={"Retry-After": "5"}
    )
    httpserver.expect_oneshot_request("/v2/enqueue").respond_with_data("", status=500)
    alert = {"dedup_key": "k"}
    refused, limited, broken = (
        pagerduty.run_action("resolve", _config(httpserver), alert) for _ in range(3)
    )
    assert (refused.retryable, refused.error) == (False, "pagerduty error: Event object is invalid")
    assert (limited.retryable, limited.retry_after) == (True, 5.0)
    assert (broken.retryable, broken.error) == (True, "pagerduty answered HTTP 500")
    bad = pagerduty.run_action("trigger", _config(httpserver), {"summary": "x", "source": ""})
    assert bad.error == "invalid input: source: must not be empty"


def test_pagerduty_config_secret_defaults_and_test(
    pagerduty: PluginHarness, httpserver: HTTPServer
) -> None:
    connector = pagerduty.connector()
    assert secret_paths(connector.config_schema) == [("routing_key",)]
    assert pagerduty.api_config_errors({}) == {"config.routing_key": ["is required"]}
    assert connector.config_schema["properties"]["api_url"]["default"] == (
        "https://events.pagerduty.com"
    )
    assert set(connector.actions) == {"trigger", "resolve"}
    httpserver.expect_request("/", method="HEAD").respond_with_data("", status=404)
    result = pagerduty.test(_config(httpserver))
    assert result.success and result.data == {"answered": {"api_url": 404}}


# --- section 7b: OAuth2 ------------------------------------------------------------------------


def test_the_oauth_example_refreshes_a_rejected_token_once(httpserver: HTTPServer) -> None:
    list_repos = _module("oauth_example", _block_after(OAUTH)).list_repos
    asked: list[str | None] = []

    def tokens(integration_id: str, rejected: str | None) -> str:
        asked.append(rejected)
        return "fresh" if rejected else "stale"

    httpserver.expect_oneshot_request(
        "/user/repos", headers={"Authorization": "Bearer stale"}
    ).respond_with_data("", status=401)
    httpserver.expect_oneshot_request(
        "/user/repos", headers={"Authorization": "Bearer fresh"}
    ).respond_with_json([{"full_name": "octo/repo"}])
    config = {"oauth_integration_id": "int_gh", "api_base_url": httpserver.url_for("").rstrip("/")}
    with make_session(LOOPBACK) as session:
        ctx = ConnectorContext(http=session, integration_id="int_me", tokens=tokens)
        assert list_repos(config, {}, ctx) == {"repos": ["octo/repo"]}
    assert asked == [None, "stale"]
    httpserver.check_assertions()


# --- section 6: event types ----------------------------------------------------------------


def _registered(connector: Any) -> PluginRegistry:
    class Plugin:
        @hookimpl
        def register_connectors(self) -> list[Any]:
            return [connector]

    registry = PluginRegistry()
    registry.register(Plugin(), "acme")
    return registry


def test_the_event_spec_example_puts_its_schema_in_the_catalog() -> None:
    example = _module("acme_events", _block_after(EVENT_SPEC))
    registry = _registered(example.Acme())
    closed = registry.event_specs()["acme.ticket_closed"]
    assert closed.schema == example.TICKET and closed.examples == ({"ticket_id": "T-1"},)
    assert registry.event_types()["acme.ticket_opened"] == "A ticket was opened in Acme."
    # An example its own schema refuses disables the connector, naming the place.
    broken = example.Acme()
    broken.event_types = {"acme.ticket_closed": EventSpec("x", example.TICKET, ({"priority": 1},))}
    [status] = _registered(broken).statuses()
    assert status.status == "error"
    assert "acme.ticket_closed" in str(status.error) and "examples.0.ticket_id" in str(status.error)
