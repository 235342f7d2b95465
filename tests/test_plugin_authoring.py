"""What a plugin author relies on: docs/plugins.md's example package and tests run as written,
``PluginHarness`` behaves like the service, and the documented contract matches the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from app.connectors import ActionError, BlockedDestination, TestResult
from app.connectors.testing import PluginHarness, PluginLoadError
from tests.peers import Receiver

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "plugins.md").read_text()
INTS = "/api/v1/integrations"


def _block_after(marker: str, language: str) -> str:
    """The first ```language block that follows ``marker`` in the guide."""
    start = GUIDE.index(marker)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(GUIDE, start)
    assert match is not None, marker
    return match.group(1)


def _pytest(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    # This checkout first: an installed Switchboard (say, another checkout's editable install)
    # must not be what the plugin's tests import.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pythonpath), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_guides_acme_package_passes_the_guides_tests(tmp_path: Path) -> None:
    """Sections 1 and 9 as a new repository: pyproject, the plugin module and its tests."""
    (tmp_path / "pyproject.toml").write_text(_block_after("declares one entry point", "toml"))
    package = tmp_path / "src" / "switchboard_acme"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        _block_after("`src/switchboard_acme/__init__.py`:", "python")
    )
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_acme.py").write_text(
        _block_after("`tests/test_acme.py`:", "python")
    )
    run = _pytest(tmp_path, tmp_path / "src")
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^5 passed", run.stdout, re.M), run.stdout


def test_the_example_connector_passes_its_own_tests_as_its_ci_would() -> None:
    example = ROOT / "tests" / "example_connector"
    run = _pytest(example, example)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^4 passed", run.stdout, re.M), run.stdout


def test_the_harness_refuses_a_plugin_the_service_would_disable() -> None:
    class Typo:
        @staticmethod
        def register_conectors() -> list[object]:
            return []

    from app import hookimpl

    Typo.register_conectors = hookimpl(Typo.register_conectors)  # type: ignore[method-assign]
    with pytest.raises(PluginLoadError, match="unknown hook register_conectors"):
        PluginHarness(Typo(), name="typo")


def test_the_harness_loads_installed_entry_points_and_runs_actions_like_a_worker() -> None:
    peer = Receiver(lambda req, n: (503, {}, b""))
    try:
        with PluginHarness("slack") as slack:
            assert slack.connector().name == "slack"
            config = {"webhook_url": peer.url + "/services/x"}
            outcome = slack.run_action("send_message", config, {"text": "hi"})
        assert (outcome.success, outcome.retryable, outcome.error) == (
            False,
            True,
            "slack answered HTTP 503",
        )
        assert len(peer.requests) == 1
    finally:
        peer.close()


def test_blocked_destination_is_what_the_guard_raises() -> None:
    peer = Receiver()
    try:
        with PluginHarness("slack", allowed_networks=()) as closed:
            with pytest.raises(BlockedDestination, match="loopback") as raised:
                closed.context().http.get(peer.url, timeout=5)
        assert isinstance(raised.value, requests.ConnectionError)
        assert peer.requests == []
    finally:
        peer.close()


def test_the_documented_attributes_of_test_result_and_action_error() -> None:
    section = GUIDE[GUIDE.index("## 3. The `Connector` class") : GUIDE.index("## 4.")]
    documented = dict(re.findall(r"`(\w+): ([\w\[\], |]+)`", section))
    fields = TestResult.__dataclass_fields__
    assert {name: documented.get(name) for name in fields} == {
        "success": "bool",
        "message": "str",
        "data": "dict",
    }
    result = TestResult(True, "ok")
    assert (result.success, result.message, result.data) == (True, "ok", {})

    actions = GUIDE[GUIDE.index("## 5. Actions") : GUIDE.index("## 6.")]
    documented = dict(re.findall(r"`(\w+): ([\w\[\], |]+)`", actions))
    error = ActionError("slow down", retryable=True, retry_after=2.0)
    attributes = {k: v for k, v in vars(error).items()}
    assert set(attributes) == {"message", "retryable", "retry_after"}
    assert {k: documented.get(k) for k in attributes} == {
        "message": "str",
        "retryable": "bool",
        "retry_after": "float | None",
    }
    assert attributes == {"message": "slow down", "retryable": True, "retry_after": 2.0}
    assert str(error) == "slow down"


def test_config_errors_and_the_apis_errors_differ_by_the_config_prefix(api) -> None:
    config = {"upstreams": [{"url": "not a url", "weight": 0}], "colour": "red"}
    with PluginHarness("rest") as rest:
        expected = rest.api_config_errors(config)
        assert rest.api_config_errors([]) == {"config": ["must be of type object"]}
    answered = api.post(
        INTS, json={"name": "x", "type": "api", "provider": "rest", "config": config}
    )
    assert answered.status_code == 422
    assert answered.json["errors"] == expected
    assert set(expected) == {"config.upstreams.0.url", "config.upstreams.0.weight", "config.colour"}


def test_the_integration_type_must_be_the_connectors(api) -> None:
    """docs/plugins.md §3: `type` equals the connector's, or 422 names `type`."""
    wrong = api.post(
        INTS, json={"name": "x", "type": "api", "provider": "slack", "config": {"channel": "#a"}}
    )
    assert wrong.status_code == 422 and list(wrong.json["errors"]) == ["type"]
    assert "'notification'" in wrong.json["detail"]


def test_a_manually_run_action_is_tried_four_times_then_fails(api, worker) -> None:
    """docs/plugins.md §5: a retryable failure gets 4 attempts, the job shows each one."""
    peer = Receiver(lambda req, n: (503, {}, b""))
    try:
        created = api.post(
            INTS,
            json={
                "name": "flaky",
                "type": "notification",
                "provider": "slack",
                "status": "active",
                "config": {"webhook_url": peer.url + "/services/x"},
            },
        ).json
        job_id = api.post(f"{INTS}/{created['id']}/actions/send_message", json={"text": "hi"}).json[
            "job_id"
        ]
        seen: set[str] = set()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            job = api.get(f"/api/v1/jobs/{job_id}").json
            seen.add(job["status"])
            if job["status"] == "failed":
                break
            time.sleep(0.1)
        assert job["status"] == "failed", job
        assert job["attempts"] == 4 and job["error"] == "slack answered HTTP 503", job
        assert "scheduled" in seen, seen
        assert len(peer.requests) == 4
        logs = api.get(f"{INTS}/{created['id']}/logs").json["items"]
        assert [entry["status"] for entry in logs] == ["error", "pending", "pending", "pending"]
    finally:
        peer.close()
