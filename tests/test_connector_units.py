"""Connector plugin system and built-in connectors, tested without Flask, Redis or a database.

Slack, GitHub and REST peers are real HTTP servers on 127.0.0.1 (pytest-httpserver) that speak
the services' formats; nothing outside this machine is called.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.metadata
import inspect
import json
import logging
import random
import re
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from app import hookimpl
from app.connectors import (
    ActionError,
    Connector,
    ConnectorContext,
    Event,
    InboundRejected,
    InboundRequest,
    TestResult,
    config_errors,
    hookspecs,
    parse_retry_after,
    replace_secrets,
    secret_paths,
)
from app.connectors.registry import ENTRY_POINT_GROUP, PluginRegistry
from plugins import github, rest, slack

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = ROOT / "tests" / "example_connector"
DOCS = ROOT / "docs" / "plugins.md"


class RecordingSession(requests.Session):
    """A plain session that remembers the keyword arguments of every request."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        self.calls.append({"method": method, "url": url, **kwargs})
        return super().request(method, url, *args, **kwargs)


@pytest.fixture
def http() -> Iterator[RecordingSession]:
    with RecordingSession() as session:
        yield session
    # Every outbound call of every connector must carry an explicit timeout.
    assert all(call.get("timeout") for call in session.calls), session.calls


@pytest.fixture
def ctx(http: RecordingSession) -> ConnectorContext:
    return ConnectorContext(http=http, integration_id="int_test")


@pytest.fixture
def registry() -> PluginRegistry:
    """The built-ins only (other tests may have installed third-party connectors)."""
    loaded = PluginRegistry()
    loaded.load_entry_points(allow=BUILTINS)
    return loaded


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


BUILTINS = ("github", "rest", "slack")


# --- registry ----------------------------------------------------------------------------


def test_builtins_load_from_entry_points(registry: PluginRegistry) -> None:
    version = importlib.metadata.version("switchboard")
    rows = {row.name: row for row in registry.statuses()}
    assert set(rows) == {"github", "rest", "slack"}
    for name, row in rows.items():
        assert (row.status, row.plugin, row.error) == ("loaded", name, None)
        assert (row.distribution, row.distribution_version) == ("switchboard", version)
        assert row.version == "1.0.0"
    assert isinstance(registry.get("slack"), slack.SlackConnector)
    assert isinstance(registry.get("github"), github.GitHubConnector)
    assert isinstance(registry.get("rest"), rest.RestConnector)
    assert registry.get("nope") is None
    assert set(registry.connectors()) == {"github", "rest", "slack"}
    types = {c.name: c.type for c in registry.connectors().values()}
    assert types == {"slack": "notification", "github": "webhook", "rest": "api"}
    assert registry.event_types()["github.workflow_run.completed"]
    assert "slack.app_mention" in registry.event_types()


def test_allow_list_loads_only_listed_plugins() -> None:
    registry = PluginRegistry()
    registry.load_entry_points(allow=["slack", "jira"])
    assert list(registry.connectors()) == ["slack"]
    rows = {row.name: row for row in registry.statuses()}
    assert rows["slack"].status == "loaded"
    assert rows["jira"].status == "error"
    assert "not installed" in (rows["jira"].error or "")
    assert "github" not in rows


def test_empty_allow_list_loads_nothing() -> None:
    registry = PluginRegistry()
    registry.load_entry_points(allow=[])
    assert registry.connectors() == {} and registry.statuses() == []


class Widget(Connector):
    name = "widget"
    type = "api"
    version = "2.0.0"
    event_types = {"widget.spun": "A widget spun."}


class GoodPlugin:
    @hookimpl
    def register_connectors(self) -> list[Connector]:
        return [Widget()]

    @hookimpl
    def register_event_types(self) -> dict[str, str]:
        return {"widget.audit": "Something was audited."}


class RaisingPlugin:
    @hookimpl
    def register_connectors(self) -> list[Connector]:
        raise RuntimeError("boom")


class TypoPlugin:
    @hookimpl
    def register_conectors(self) -> list[Connector]:
        return [Widget()]


class WrongShapePlugin:
    @hookimpl
    def register_connectors(self) -> str:
        return "not a list"


class WrongArgsPlugin:
    @hookimpl
    def register_connectors(self, app: object) -> list[Connector]:
        return []


class BadConnectorsPlugin:
    @hookimpl
    def register_connectors(self) -> list[Any]:
        class BadName(Connector):
            name = "Bad Name"

        class BadSchema(Connector):
            name = "bad_schema"
            config_schema = {"type": "objekt"}

        class BadEvents(Connector):
            name = "bad_events"
            event_types = {"integration.created": "spoofed"}

        class Duplicate(Connector):
            name = "slack"

        class Fine(Connector):
            name = "fine"

        return [BadName(), BadSchema(), BadEvents(), Duplicate(), "junk", Fine()]


def test_broken_plugins_are_errored_and_others_load(
    registry: PluginRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    plugins = {
        "raising": RaisingPlugin(),
        "typo": TypoPlugin(),
        "wrong_shape": WrongShapePlugin(),
        "wrong_args": WrongArgsPlugin(),
        "bad_connectors": BadConnectorsPlugin(),
        "good": GoodPlugin(),
    }
    ghost = importlib.metadata.EntryPoint("ghost", "switchboard_no_such_module", ENTRY_POINT_GROUP)
    with caplog.at_level(logging.ERROR, logger="app.connectors.registry"):
        registry.load_entry_points(entry_points=[ghost])
        for name, plugin in plugins.items():
            registry.register(plugin, name)
    try:
        rows = {(row.plugin, row.name): row for row in registry.statuses()}
        errors = {key: row.error or "" for key, row in rows.items() if row.status == "error"}
        assert "switchboard_no_such_module" in errors[("ghost", "ghost")]
        assert "boom" in errors[("raising", "raising")]
        assert "unknown hook register_conectors" in errors[("typo", "typo")]
        assert "must return a list" in errors[("wrong_shape", "wrong_shape")]
        assert "app" in errors[("wrong_args", "wrong_args")]
        assert "must match" in errors[("bad_connectors", "Bad Name")]
        assert "not a valid JSON Schema" in errors[("bad_connectors", "bad_schema")]
        assert "must start with 'bad_events.'" in errors[("bad_connectors", "bad_events")]
        assert "already provided by plugin 'slack'" in errors[("bad_connectors", "slack")]
        assert "not a Connector" in errors[("bad_connectors", "'junk'")]
        assert rows[("bad_connectors", "fine")].status == "loaded"
        # The built-ins, the good plugin and the good connector of a mixed plugin all work.
        assert set(registry.connectors()) == {"github", "rest", "slack", "widget", "fine"}
        assert isinstance(registry.get("slack"), slack.SlackConnector)
        assert rows[("good", "widget")].version == "2.0.0"
        assert registry.event_types()["widget.spun"] == "A widget spun."
        assert registry.event_types()["widget.audit"] == "Something was audited."
        # Errored plugins are out of pluggy too, so later hook calls never reach them.
        assert registry.pm.get_plugin("raising") is None
        assert registry.pm.get_plugin("good") is plugins["good"]
        assert "plugin 'typo' implements unknown hook" in caplog.text
        # A second plugin under a taken name is refused, not merged; the same plugin object
        # under a second name is refused without disturbing the first registration.
        registry.register(GoodPlugin(), "good")
        registry.register(plugins["good"], "good_again")
        assert registry.pm.get_plugin("good") is plugins["good"]
        assert any(
            row.plugin == "good_again" and row.status == "error" for row in registry.statuses()
        )
        assert any(row.plugin == "good" and row.status == "error" for row in registry.statuses())
    finally:
        for name in [*plugins, "ghost", "good_again"]:
            registry.unregister(name)
    assert set(registry.connectors()) == {"github", "rest", "slack"}
    assert {row.plugin for row in registry.statuses()} == {"github", "rest", "slack"}
    assert "widget.audit" not in registry.event_types()


def test_plugin_import_raising_system_exit_is_contained(tmp_path: Path) -> None:
    (tmp_path / "switchboard_exits.py").write_text("raise SystemExit(3)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        registry = PluginRegistry()
        ep = importlib.metadata.EntryPoint("exits", "switchboard_exits", ENTRY_POINT_GROUP)
        registry.load_entry_points(entry_points=[ep])
        [row] = registry.statuses()
        assert row.status == "error" and "SystemExit" in (row.error or "")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("switchboard_exits", None)


def test_run_test_guards_connectors(registry: PluginRegistry, ctx: ConnectorContext) -> None:
    class Exploding(Connector):
        name = "exploding"

        def test(self, config: dict[str, Any], ctx: ConnectorContext) -> TestResult:
            raise ValueError("https://hooks.slack.com/services/T/B/SECRET unreachable")

    class Sloppy(Connector):
        name = "sloppy"

        def test(self, config: dict[str, Any], ctx: ConnectorContext) -> Any:
            return {"ok": True}

    result = registry.run_test(Exploding(), {}, ctx)
    assert not result.success and "ValueError" in result.message
    assert "SECRET" not in result.message
    assert not registry.run_test(Sloppy(), {}, ctx).success
    github_connector = registry.get("github")
    assert github_connector is not None
    invalid = registry.run_test(github_connector, {}, ctx)
    assert not invalid.success
    assert invalid.data == {"errors": {"webhook_secret": ["is required"]}}
    assert registry.run_test(Connector(), {}, ctx).success


# --- example distribution ---------------------------------------------------------------


@pytest.fixture
def example_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))
    import switchboard_example

    yield switchboard_example
    sys.modules.pop("switchboard_example", None)


def test_example_connector_through_an_entry_point(
    example_module: Any, ctx: ConnectorContext
) -> None:
    registry = PluginRegistry()
    ep = importlib.metadata.EntryPoint("example", "switchboard_example", ENTRY_POINT_GROUP)
    registry.load_entry_points(entry_points=[ep])
    connector = registry.get("example")
    assert isinstance(connector, example_module.EchoConnector)
    assert registry.event_types() == {"example.echoed": connector.event_types["example.echoed"]}
    assert config_errors(connector.config_schema, {}) == {"greeting": ["is required"]}
    assert secret_paths(connector.config_schema) == [("api_token",)]
    config = {"greeting": "Hello", "api_token": "tok"}
    assert registry.run_test(connector, config, ctx).success
    action = connector.actions["echo"]
    assert config_errors(action.input_schema, {"message": "world"}) == {}
    assert action.handler(config, {"message": "world"}, ctx) == {"echo": "Hello, world"}
    request = InboundRequest(
        "POST", {"x-example-token": "tok"}, b'{"message": "in"}', remote_addr="127.0.0.1"
    )
    result = connector.handle_inbound(request, config, ctx)
    assert result.events == [Event("example.echoed", {"echo": "Hello, in"})]
    with pytest.raises(InboundRejected):
        connector.handle_inbound(InboundRequest("POST", {}, b"{}"), config, ctx)


def test_example_connector_builds_as_its_own_distribution(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for path in EXAMPLE_DIR.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            target = source / path.relative_to(EXAMPLE_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    if build.returncode and re.search(
        r"No matching distribution|Could not find a version", build.stderr
    ):
        pytest.skip("no package index reachable to build the example wheel")
    assert build.returncode == 0, build.stderr
    [wheel] = tmp_path.glob("switchboard_example_connector-1.0.0-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    [ep] = [
        ep
        for dist in importlib.metadata.distributions(path=[str(site)])
        for ep in dist.entry_points
        if ep.group == ENTRY_POINT_GROUP
    ]
    assert (ep.name, ep.value) == ("example", "switchboard_example")
    sys.path.insert(0, str(site))
    try:
        registry = PluginRegistry()
        registry.load_entry_points(entry_points=[ep])
        [row] = registry.statuses()
        assert (row.name, row.status) == ("example", "loaded")
        assert (row.distribution, row.distribution_version) == (
            "switchboard-example-connector",
            "1.0.0",
        )
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("switchboard_example", None)


# --- documentation ----------------------------------------------------------------------


class _Source(str):
    """An annotation string that renders without quotes in a signature."""

    def __repr__(self) -> str:
        return str(self)


def source_signature(function: Any) -> str:
    """``def name(...) -> ...:`` exactly as the (string) annotations are written in the code."""
    signature = inspect.signature(function)

    def source(annotation: Any) -> Any:
        return annotation if annotation is inspect.Parameter.empty else _Source(annotation)

    params = [p.replace(annotation=source(p.annotation)) for p in signature.parameters.values()]
    rendered = signature.replace(
        parameters=params, return_annotation=source(signature.return_annotation)
    )
    return f"def {function.__name__}{rendered}:"


HOOKSPECS = [value for value in vars(hookspecs).values() if hasattr(value, "switchboard_spec")]


@pytest.mark.parametrize(
    "function",
    [*HOOKSPECS, Connector.test, Connector.handle_inbound, ActionError.__init__],
    ids=lambda function: function.__qualname__,
)
def test_documented_with_exact_signature(function: Any) -> None:
    documented = DOCS.read_text()
    assert source_signature(function) in documented, (
        f"docs/plugins.md must show {source_signature(function)}"
    )


def test_hookspecs_are_known_and_have_one_line_docstrings() -> None:
    assert {spec.__name__ for spec in HOOKSPECS} == {"register_connectors", "register_event_types"}
    for spec in HOOKSPECS:
        assert spec.__doc__ and "\n" not in spec.__doc__.strip()


# --- schema helpers ---------------------------------------------------------------------


def test_config_errors_paths_and_messages() -> None:
    schema = rest.CONFIG_SCHEMA
    config = {
        "upstreams": [{"url": "ftp://files", "weight": 0}, {}],
        "auth": {"type": "bearer"},
        "timeout_ms": 5,
        "extra": True,
    }
    assert config_errors(schema, config) == {
        "upstreams.0.url": ["must be a valid URL"],
        "upstreams.0.weight": ["must be at least 1"],
        "upstreams.1.url": ["is required"],
        "auth.token": ["is required"],
        "timeout_ms": ["must be at least 100"],
        "extra": ["is not an allowed field"],
    }
    errors = config_errors(schema, {"upstreams": [], "auth": {"type": "oauth"}})
    assert errors["upstreams"] == ["must contain at least 1 item"]
    assert errors["auth"][0].startswith("must match exactly one of: type none; type bearer")
    assert config_errors(schema, "nope") == {"_schema": ["must be of type object"]}
    assert config_errors(schema, {"upstreams": [{"url": "https://api.example/v1"}]}) == {}


def test_config_errors_slack_modes_never_echo_secrets() -> None:
    schema = slack.CONFIG_SCHEMA
    assert config_errors(schema, {"webhook_url": "https://hooks.slack.com/services/T/B/X"}) == {}
    assert config_errors(schema, {"bot_token": "xoxb-1", "channel": "C1"}) == {}
    assert config_errors(schema, {"bot_token": "xoxb-1"}) == {"channel": ["is required"]}
    both = {"webhook_url": "ftp://secret-token-xyz", "bot_token": "xoxb-2", "channel": "C1"}
    errors = config_errors(schema, both)
    assert errors["_schema"] == [
        "must match exactly one of: incoming webhook (webhook_url); "
        "bot token (bot_token and channel)"
    ]
    assert errors["webhook_url"] == ["must be a valid URL"]
    assert "secret-token-xyz" not in json.dumps(errors)
    assert "_schema" in config_errors(schema, {})


def test_secret_paths_and_replace_secrets() -> None:
    assert secret_paths(rest.CONFIG_SCHEMA) == [
        ("auth", "token"),
        ("auth", "password"),
        ("auth", "value"),
    ]
    assert secret_paths(slack.CONFIG_SCHEMA) == [
        ("webhook_url",),
        ("bot_token",),
        ("signing_secret",),
    ]
    assert secret_paths(github.CONFIG_SCHEMA) == [("webhook_secret",)]
    nested = {
        "type": "object",
        "$defs": {"cred": {"type": "object", "properties": {"key": {"writeOnly": True}}}},
        "properties": {
            "servers": {"type": "array", "items": {"$ref": "#/$defs/cred"}},
            "tokens": {"type": "object", "additionalProperties": {"writeOnly": True}},
            "name": {"type": "string"},
        },
    }
    assert secret_paths(nested) == [("servers", "*", "key"), ("tokens", "*")]
    config: dict[str, Any] = {
        "servers": [{"key": "k1"}, {"key": None}, {}],
        "tokens": {"a": "t"},
        "name": "n",
    }
    redacted = replace_secrets(nested, config, lambda _: "****")
    assert redacted == {
        "servers": [{"key": "****"}, {"key": None}, {}],
        "tokens": {"a": "****"},
        "name": "n",
    }
    assert config["servers"][0]["key"] == "k1"  # the original is untouched
    bearer = {"upstreams": [{"url": "http://x"}], "auth": {"type": "bearer", "token": "t"}}
    assert replace_secrets(rest.CONFIG_SCHEMA, bearer, str.upper)["auth"]["token"] == "T"


def test_value_types() -> None:
    assert TestResult(True, "ok").to_dict() == {"success": True, "message": "ok", "data": {}}
    request = InboundRequest("POST", {"X-Thing": "1"}, b"not json")
    assert request.headers["x-thing"] == "1"
    with pytest.raises(InboundRejected) as rejected:
        request.json()
    assert rejected.value.status == 400
    assert parse_retry_after("30") == 30.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    assert 100 < (parse_retry_after(later) or 0) <= 120
    description = github.GitHubConnector().to_dict()
    assert description["inbound"] is True and description["type"] == "webhook"
    assert rest.RestConnector().to_dict()["actions"]["request"]["input_schema"]
    assert rest.RestConnector().accepts_inbound is False
    with pytest.raises(InboundRejected):
        rest.RestConnector().handle_inbound(request, {}, ConnectorContext(http=requests.Session()))


# --- slack -------------------------------------------------------------------------------


def test_slack_webhook_send_message(httpserver: HTTPServer, ctx: ConnectorContext) -> None:
    httpserver.expect_oneshot_request(
        "/services/T1/B1/x",
        method="POST",
        json={"text": "deployed", "blocks": [{"type": "divider"}]},
    ).respond_with_data("ok")
    config = {"webhook_url": httpserver.url_for("/services/T1/B1/x"), "timeout_ms": 2500}
    send = slack.SlackConnector.actions["send_message"]
    assert send.handler(config, {"text": "deployed", "blocks": [{"type": "divider"}]}, ctx) == {
        "ok": True
    }
    assert ctx.http.calls[-1]["timeout"] == 2.5  # type: ignore[attr-defined]
    httpserver.expect_oneshot_request("/services/T1/B1/x").respond_with_data(
        "channel_not_found", status=404
    )
    with pytest.raises(ActionError) as failed:
        send.handler(config, {"text": "x"}, ctx)
    assert (failed.value.message, failed.value.retryable) == (
        "slack error: channel_not_found",
        False,
    )
    httpserver.expect_oneshot_request("/services/T1/B1/x").respond_with_data(
        "rate limited", status=429, headers={"Retry-After": "30"}
    )
    with pytest.raises(ActionError) as limited:
        send.handler(config, {"text": "x"}, ctx)
    assert (limited.value.retryable, limited.value.retry_after) == (True, 30.0)
    httpserver.expect_oneshot_request("/services/T1/B1/x").respond_with_data("oops", status=503)
    with pytest.raises(ActionError) as unavailable:
        send.handler(config, {"text": "x"}, ctx)
    assert unavailable.value.retryable
    httpserver.check_assertions()


def test_slack_unreachable_is_retryable_and_hides_url(ctx: ConnectorContext) -> None:
    config = {"webhook_url": closed_port_url() + "/services/T/B/SECRET", "timeout_ms": 1000}
    with pytest.raises(ActionError) as failed:
        slack.send_message(config, {"text": "x"}, ctx)
    assert failed.value.retryable and "SECRET" not in failed.value.message


def test_slack_bot_send_message(httpserver: HTTPServer, ctx: ConnectorContext) -> None:
    config = {"bot_token": "xoxb-123", "channel": "C42", "api_base_url": httpserver.url_for("/api")}
    httpserver.expect_oneshot_request(
        "/api/chat.postMessage",
        method="POST",
        headers={"Authorization": "Bearer xoxb-123"},
        json={"text": "hi", "channel": "C42"},
    ).respond_with_json({"ok": True, "channel": "C42", "ts": "1700000000.000100"})
    assert slack.send_message(config, {"text": "hi"}, ctx) == {
        "ok": True,
        "channel": "C42",
        "ts": "1700000000.000100",
    }
    assert ctx.http.calls[-1]["timeout"] == 10.0  # type: ignore[attr-defined]
    httpserver.expect_oneshot_request("/api/chat.postMessage").respond_with_json(
        {"ok": False, "error": "channel_not_found"}
    )
    with pytest.raises(ActionError) as failed:
        slack.send_message(config, {"text": "hi"}, ctx)
    assert (failed.value.message, failed.value.retryable) == (
        "slack error: channel_not_found",
        False,
    )
    httpserver.expect_oneshot_request("/api/chat.postMessage").respond_with_json(
        {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "7"}
    )
    with pytest.raises(ActionError) as limited:
        slack.send_message(config, {"text": "hi"}, ctx)
    assert (limited.value.retryable, limited.value.retry_after) == (True, 7.0)
    httpserver.check_assertions()


def test_slack_test_bot_and_webhook(httpserver: HTTPServer, ctx: ConnectorContext) -> None:
    connector = slack.SlackConnector()
    config = {"bot_token": "xoxb-1", "channel": "C1", "api_base_url": httpserver.url_for("/api/")}
    httpserver.expect_oneshot_request(
        "/api/auth.test", method="POST", headers={"Authorization": "Bearer xoxb-1"}
    ).respond_with_json(
        {"ok": True, "team": "Acme", "team_id": "T1", "user": "switchboard", "user_id": "U1"}
    )
    result = connector.test(config, ctx)
    assert result.success and result.message == "authenticated as switchboard in Acme"
    assert result.data["team_id"] == "T1"
    httpserver.expect_oneshot_request("/api/auth.test").respond_with_json(
        {"ok": False, "error": "invalid_auth"}
    )
    failed = connector.test(config, ctx)
    assert (failed.success, failed.message) == (False, "slack error: invalid_auth")
    calls = len(ctx.http.calls)  # type: ignore[attr-defined]
    hook = connector.test({"webhook_url": "https://hooks.slack.com/services/T/B/X"}, ctx)
    assert hook.success and hook.data == {"mode": "webhook", "host": "hooks.slack.com"}
    assert not connector.test({"webhook_url": "https:///nohost"}, ctx).success
    assert len(ctx.http.calls) == calls  # type: ignore[attr-defined]  # webhook mode posts nothing
    httpserver.check_assertions()


def slack_request(
    body: dict[str, Any], secret: str, timestamp: int | None = None
) -> InboundRequest:
    raw = json.dumps(body).encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + raw, hashlib.sha256)
    headers = {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": "v0=" + digest.hexdigest()}
    return InboundRequest("POST", headers, raw)


def test_slack_inbound(ctx: ConnectorContext) -> None:
    connector = slack.SlackConnector()
    config = {
        "bot_token": "xoxb-1",
        "channel": "C1",
        "signing_secret": "8f742231b10e8888abcd99yyyzzz85a5",
    }
    challenge = slack_request(
        {"type": "url_verification", "challenge": "3eZbrw1a"}, config["signing_secret"]
    )
    assert connector.handle_inbound(challenge, config, ctx).response == {"challenge": "3eZbrw1a"}
    envelope = {
        "type": "event_callback",
        "team_id": "T061EG9R6",
        "api_app_id": "A0PNCHHK2",
        "event_id": "Ev0PV52K25",
        "event_time": 1700000000,
        "event": {
            "type": "app_mention",
            "user": "U061F7AUR",
            "text": "<@U0LAN0Z89> is it everything a river should be?",
            "ts": "1515449522.000016",
            "channel": "C0LAN2Q65",
            "event_ts": "1515449522000016",
        },
    }
    result = connector.handle_inbound(
        slack_request(envelope, config["signing_secret"]), config, ctx
    )
    assert result.delivery_id == "Ev0PV52K25"
    [event] = result.events
    assert event.type == "slack.app_mention"
    assert event.data["channel"] == "C0LAN2Q65" and event.data["user"] == "U061F7AUR"
    assert event.data["text"].endswith("river should be?")
    undeclared = {**envelope, "event": {"type": "tokens_revoked"}}
    assert (
        connector.handle_inbound(
            slack_request(undeclared, config["signing_secret"]), config, ctx
        ).events
        == []
    )
    forged = slack_request(envelope, "another-secret")
    with pytest.raises(InboundRejected, match="invalid X-Slack-Signature"):
        connector.handle_inbound(forged, config, ctx)
    stale = slack_request(envelope, config["signing_secret"], timestamp=int(time.time()) - 600)
    with pytest.raises(InboundRejected, match="too old"):
        connector.handle_inbound(stale, config, ctx)
    with pytest.raises(InboundRejected, match="missing"):
        connector.handle_inbound(InboundRequest("POST", {}, b"{}"), config, ctx)
    with pytest.raises(InboundRejected) as unconfigured:
        connector.handle_inbound(challenge, {"bot_token": "x", "channel": "C"}, ctx)
    assert unconfigured.value.status == 403


# --- github ------------------------------------------------------------------------------

GITHUB_SECRET = "It's a Secret to Everybody"
REPOSITORY = {
    "id": 1296269,
    "full_name": "octo-org/octo-repo",
    "html_url": "https://github.com/octo-org/octo-repo",
}


def github_request(
    event: str, payload: dict[str, Any], secret: str = GITHUB_SECRET
) -> InboundRequest:
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-Hub-Signature-256": signature,
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/044aadd",
    }
    return InboundRequest("POST", headers, body, remote_addr="140.82.115.1")


def handle_github(request: InboundRequest) -> Any:
    ctx = ConnectorContext(http=requests.Session())
    return github.GitHubConnector().handle_inbound(request, {"webhook_secret": GITHUB_SECRET}, ctx)


def test_github_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(github.hmac, "compare_digest", spy)
    request = github_request("ping", {"zen": "Design for failure.", "hook_id": 1})
    assert handle_github(request).response == {
        "ok": True,
        "zen": "Design for failure.",
        "hook_id": 1,
    }
    assert compared, "signatures must be compared with hmac.compare_digest"
    with pytest.raises(InboundRejected, match="invalid X-Hub-Signature-256") as rejected:
        handle_github(github_request("ping", {"zen": "x"}, secret="guess"))
    assert rejected.value.status == 401
    tampered = github_request("ping", {"zen": "x"})
    tampered.body += b" "
    with pytest.raises(InboundRejected):
        handle_github(tampered)
    unsigned = github_request("ping", {})
    unsigned = InboundRequest("POST", {"X-GitHub-Event": "ping"}, unsigned.body)
    with pytest.raises(InboundRejected, match="missing X-Hub-Signature-256"):
        handle_github(unsigned)


def test_github_ping_has_no_events() -> None:
    result = handle_github(
        github_request("ping", {"zen": "Keep it logically awesome.", "hook_id": 9})
    )
    assert result.delivery_id == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert result.events == [] and result.response["ok"] is True


def test_github_workflow_run_completed_failure() -> None:
    payload = {
        "action": "completed",
        "workflow_run": {
            "id": 30433642,
            "name": "CI",
            "head_branch": "main",
            "head_sha": "acb5820ced9479c074f688cc328bf03f341a511d",
            "display_title": "Fix flaky deploy test",
            "run_number": 562,
            "run_attempt": 2,
            "event": "push",
            "status": "completed",
            "conclusion": "failure",
            "html_url": "https://github.com/octo-org/octo-repo/actions/runs/30433642",
            "actor": {"login": "octocat", "id": 1},
            "triggering_actor": {"login": "hubot"},
            "head_commit": {"id": "acb5820", "message": "Fix flaky deploy test"},
        },
        "workflow": {"id": 159038, "name": "CI", "path": ".github/workflows/ci.yml"},
        "repository": REPOSITORY,
        "sender": {"login": "hubot"},
    }
    [event] = handle_github(github_request("workflow_run", payload)).events
    assert event.type == "github.workflow_run.completed"
    assert event.data == {
        "repository": "octo-org/octo-repo",
        "actor": "octocat",
        "action": "completed",
        "workflow": "CI",
        "run_id": 30433642,
        "run_number": 562,
        "run_attempt": 2,
        "trigger": "push",
        "branch": "main",
        "commit": "acb5820ced9479c074f688cc328bf03f341a511d",
        "status": "completed",
        "conclusion": "failure",
        "title": "Fix flaky deploy test",
        "message": "Fix flaky deploy test",
        "url": "https://github.com/octo-org/octo-repo/actions/runs/30433642",
    }


def test_github_push() -> None:
    payload = {
        "ref": "refs/heads/feature/login",
        "before": "9049f1265b7d61be4a8904a9a27120d2064dab3b",
        "after": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
        "created": False,
        "deleted": False,
        "forced": False,
        "compare": "https://github.com/octo-org/octo-repo/compare/9049f1265b7d...0d1a26e67d8f",
        "commits": [{"id": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"}],
        "head_commit": {
            "id": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
            "message": "Add login form\n\nWith validation.",
            "url": "https://github.com/octo-org/octo-repo/commit/0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
        },
        "pusher": {"name": "octocat", "email": "octocat@github.com"},
        "repository": REPOSITORY,
        "sender": {"login": "octocat"},
    }
    [event] = handle_github(github_request("push", payload)).events
    assert event.type == "github.push"
    data = event.data
    assert (data["repository"], data["branch"], data["tag"]) == (
        "octo-org/octo-repo",
        "feature/login",
        None,
    )
    assert data["commit"] == "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
    assert (data["actor"], data["title"], data["commits"]) == ("octocat", "Add login form", 1)
    assert data["url"] == payload["head_commit"]["url"]  # type: ignore[index]
    assert data["compare"] == payload["compare"]
    deleted = {**payload, "deleted": True, "head_commit": None, "sender": {}, "ref": "refs/tags/v1"}
    [event] = handle_github(github_request("push", deleted)).events
    assert (event.data["tag"], event.data["actor"], event.data["url"]) == (
        "v1",
        "octocat",
        payload["compare"],
    )


def test_github_other_events() -> None:
    pr = {
        "action": "closed",
        "number": 42,
        "pull_request": {
            "number": 42,
            "title": "Add login form",
            "state": "closed",
            "draft": False,
            "merged": True,
            "html_url": "https://github.com/octo-org/octo-repo/pull/42",
            "head": {"ref": "feature/login", "sha": "0d1a26e6"},
            "base": {"ref": "main", "sha": "9049f126"},
        },
        "repository": REPOSITORY,
        "sender": {"login": "octocat"},
    }
    [event] = handle_github(github_request("pull_request", pr)).events
    assert event.type == "github.pull_request.closed"
    assert (event.data["merged"], event.data["branch"], event.data["url"]) == (
        True,
        "feature/login",
        "https://github.com/octo-org/octo-repo/pull/42",
    )
    assert handle_github(github_request("pull_request", {**pr, "action": "labeled"})).events == []
    check_run = {
        "action": "completed",
        "check_run": {
            "name": "lint",
            "head_sha": "ce587453ced02b1526dfb4cb910479d431683101",
            "status": "completed",
            "conclusion": "success",
            "html_url": "https://github.com/octo-org/octo-repo/runs/4",
            "output": {"title": "No lint errors"},
            "check_suite": {"head_branch": "main"},
        },
        "repository": REPOSITORY,
        "sender": {"login": "octocat"},
    }
    [event] = handle_github(github_request("check_run", check_run)).events
    assert (event.type, event.data["conclusion"], event.data["branch"]) == (
        "github.check_run.completed",
        "success",
        "main",
    )
    suite = {
        "action": "completed",
        "check_suite": {
            "head_branch": "main",
            "head_sha": "ce58745",
            "status": "completed",
            "conclusion": "failure",
            "app": {"name": "GitHub Actions"},
        },
        "repository": REPOSITORY,
        "sender": {"login": "octocat"},
    }
    [event] = handle_github(github_request("check_suite", suite)).events
    assert event.type == "github.check_suite.completed"
    assert event.data["url"] == "https://github.com/octo-org/octo-repo/commit/ce58745"
    deployment = {
        "action": "created",
        "deployment_status": {
            "state": "failure",
            "environment": "production",
            "target_url": "https://ci.example/deploys/7",
            "description": "Timed out",
        },
        "deployment": {"ref": "main", "sha": "ce58745", "environment": "production"},
        "repository": REPOSITORY,
        "sender": {"login": "octocat"},
    }
    [event] = handle_github(github_request("deployment_status", deployment)).events
    assert event.type == "github.deployment_status.failure"
    assert (event.data["environment"], event.data["url"]) == (
        "production",
        "https://ci.example/deploys/7",
    )
    odd = {**deployment, "deployment_status": {"state": "exploded"}}
    [event] = handle_github(github_request("deployment_status", odd)).events
    assert event.type == "github.deployment_status.created"
    issues = handle_github(github_request("issues", {"action": "opened", "repository": REPOSITORY}))
    assert issues.events == [] and issues.delivery_id
    declared = github.GitHubConnector.event_types
    for name in ("github.push", "github.workflow_run.completed", "github.check_run.completed"):
        assert declared[name]


def test_github_form_encoded_payload() -> None:
    body = urlencode(
        {"payload": json.dumps({"zen": "Half measures are as bad as nothing."})}
    ).encode()
    signature = "sha256=" + hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "X-GitHub-Event": "ping",
        "X-Hub-Signature-256": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    result = handle_github(InboundRequest("POST", headers, body))
    assert result.response["zen"] == "Half measures are as bad as nothing."


def test_github_test_checks_secret_strength(ctx: ConnectorContext) -> None:
    connector = github.GitHubConnector()
    assert not connector.test({"webhook_secret": "hunter2"}, ctx).success
    assert not connector.test({"webhook_secret": "a" * 40}, ctx).success
    assert connector.test({"webhook_secret": "3f9c1e7a5b2d8c4e6f0a1b3c5d7e9f21"}, ctx).success


# --- rest --------------------------------------------------------------------------------


def capture(httpserver: HTTPServer, path: str, response: Response | None = None) -> list[Request]:
    """Answer ``path`` once with ``response`` (default JSON ok) and remember the request."""
    seen: list[Request] = []

    def handler(request: Request) -> Response:
        request.get_data()
        seen.append(request)
        return response or Response(json.dumps({"ok": True}), content_type="application/json")

    httpserver.expect_oneshot_request(path).respond_with_handler(handler)
    return seen


@pytest.mark.parametrize(
    ("auth", "header", "expected"),
    [
        ({"type": "none"}, "Authorization", None),
        ({"type": "bearer", "token": "tok-1"}, "Authorization", "Bearer tok-1"),
        (
            {"type": "basic", "username": "ann", "password": "p:w"},
            "Authorization",
            "Basic " + base64.b64encode(b"ann:p:w").decode(),
        ),
        ({"type": "api_key", "header": "X-Api-Key", "value": "k-9"}, "X-Api-Key", "k-9"),
    ],
)
def test_rest_request_with_each_auth(
    httpserver: HTTPServer,
    ctx: ConnectorContext,
    auth: dict[str, Any],
    header: str,
    expected: str | None,
) -> None:
    config = {
        "upstreams": [{"url": httpserver.url_for("/v1")}],
        "auth": auth,
        "headers": {"X-Team": "core"},
        "timeout_ms": 3000,
    }
    assert config_errors(rest.CONFIG_SCHEMA, config) == {}
    seen = capture(httpserver, "/v1/items")
    result = rest.send_request(
        config,
        {
            "method": "POST",
            "path": "/items",
            "query": {"page": 2},
            "headers": {"X-Trace": "t1"},
            "body": {"name": "widget"},
        },
        ctx,
    )
    assert result["status"] == 200 and result["body"] == {"ok": True}
    assert result["upstream"] == httpserver.url_for("/v1") and result["truncated"] is False
    [request] = seen
    assert request.headers.get(header) == expected
    assert request.headers["X-Team"] == "core" and request.headers["X-Trace"] == "t1"
    assert request.args["page"] == "2" and json.loads(request.data) == {"name": "widget"}
    assert ctx.http.calls[-1]["timeout"] == 3.0  # type: ignore[attr-defined]
    assert rest.build_auth_headers(config).get(header) == expected


def test_rest_request_bodies_and_failures(httpserver: HTTPServer, ctx: ConnectorContext) -> None:
    config = {"upstreams": [{"url": httpserver.url_for("/")}]}
    big = "x" * (rest.MAX_BODY_BYTES + 10)
    capture(httpserver, "/big", Response(big, content_type="text/plain"))
    result = rest.send_request(config, {"method": "GET", "path": "/big"}, ctx)
    assert result["truncated"] is True and len(result["body"]) == rest.MAX_BODY_BYTES
    capture(httpserver, "/missing", Response("no such thing", status=404))
    missing = rest.send_request(config, {"method": "GET", "path": "/missing"}, ctx)
    assert (missing["status"], missing["body"]) == (404, "no such thing")
    for method, retryable in (("GET", True), ("POST", False)):
        capture(httpserver, "/flaky", Response("down", status=502))
        with pytest.raises(ActionError) as failed:
            rest.send_request(config, {"method": method, "path": "/flaky"}, ctx)
        assert failed.value.retryable is retryable
    capture(
        httpserver, "/limited", Response("slow down", status=429, headers={"Retry-After": "12"})
    )
    with pytest.raises(ActionError) as limited:
        rest.send_request(config, {"method": "POST", "path": "/limited"}, ctx)
    assert (limited.value.retryable, limited.value.retry_after) == (True, 12.0)
    down = {"upstreams": [{"url": closed_port_url()}], "timeout_ms": 1000}
    for method, retryable in (("PUT", True), ("PATCH", False)):
        with pytest.raises(ActionError) as unreachable:
            rest.send_request(down, {"method": method}, ctx)
        assert unreachable.value.retryable is retryable
    httpserver.check_assertions()


def test_rest_pick_upstream_follows_weights() -> None:
    upstreams: list[dict[str, Any]] = [{"url": "http://a", "weight": 3}, {"url": "http://b"}]
    rng = random.Random(1234)
    picks = [rest.pick_upstream(upstreams, rng)["url"] for _ in range(4000)]
    assert 0.72 < picks.count("http://a") / len(picks) < 0.78
    assert rest.pick_upstream([{"url": "http://only"}])["url"] == "http://only"


def test_rest_health_check(httpserver: HTTPServer, ctx: ConnectorContext) -> None:
    connector = rest.RestConnector()
    config: dict[str, Any] = {
        "upstreams": [{"url": httpserver.url_for("/api")}, {"url": "http://unused.invalid"}],
        "auth": {"type": "bearer", "token": "t"},
        "health_check": {"method": "HEAD", "path": "/health", "expected_status": [200, 204]},
    }
    seen = capture(httpserver, "/api/health", Response(status=204))
    result = connector.test(config, ctx)
    assert result.success and result.data["status"] == 204
    assert seen[0].method == "HEAD" and seen[0].headers["Authorization"] == "Bearer t"
    capture(httpserver, "/", Response("oops", status=500))
    failed = connector.test({"upstreams": [{"url": httpserver.url_for("/")}]}, ctx)
    assert not failed.success and "expected 200" in failed.message
    unreachable = connector.test(
        {"upstreams": [{"url": closed_port_url()}], "timeout_ms": 500}, ctx
    )
    assert not unreachable.success and "ConnectionError" in unreachable.message
    httpserver.check_assertions()
