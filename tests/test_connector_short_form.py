"""The short form of a connector (``DeclarativeConnector``, ``@action``, field shortcuts,
``provides``) and ``ConnectorContext.request``, the error policy it relies on, against real
local peers; nothing leaves this machine."""

from __future__ import annotations

import socket
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pytest_httpserver import HTTPServer

from app.connectors import (
    ActionError,
    Connector,
    ConnectorContext,
    DeclarativeConnector,
    InboundRequest,
    InboundResult,
    TestResult,
    action,
    optional,
    provides,
    secret,
    secret_paths,
    secret_url,
    url,
    url_paths,
)
from app.connectors.declarative import UNKNOWN_VERSION
from app.connectors.jsonschemas import URL_PATTERN, object_schema, with_defaults
from app.connectors.testing import LOOPBACK, PluginHarness
from app.outbound.guard import make_session, refused_by_guard
from tests.peers import Receiver
from tests.plugin_site import install_plugin

JSON = dict[str, Any]


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def ctx() -> Iterator[ConnectorContext]:
    """A context like the service's: the guarded session, opened to loopback only."""
    with make_session(LOOPBACK) as session:
        yield ConnectorContext(http=session, connector="acme")


# --- fields and defaults -----------------------------------------------------------------


def test_field_shortcuts_are_plain_json_schema() -> None:
    assert secret("API token") == {
        "type": "string",
        "minLength": 1,
        "writeOnly": True,
        "description": "API token",
    }
    assert url(default="https://api.example") == {
        "type": "string",
        "format": "uri",
        "pattern": URL_PATTERN,
        "default": "https://api.example",
    }
    assert secret_url("Webhook", title="Hook") == {
        **url("Webhook", title="Hook"),
        "writeOnly": True,
    }
    schema = object_schema(
        {
            "hook": secret_url(),
            "token": optional(secret()),
            "base": url(default="https://api.example"),
            "note": {"type": "string"},
        }
    )
    assert schema["required"] == ["hook", "note"]
    assert schema["additionalProperties"] is False
    assert all("x-optional" not in field for field in schema["properties"].values())
    assert secret_paths(schema) == [("hook",), ("token",)]
    assert url_paths(schema) == [("hook",), ("base",)]


def test_with_defaults_fills_absent_properties_of_objects_and_array_items() -> None:
    schema = {
        "type": "object",
        "properties": {
            "timeout_ms": {"type": "integer", "default": 10000},
            "check": {"type": "object", "properties": {"path": {"default": "/"}}},
            "hosts": {
                "type": "array",
                "items": {"type": "object", "properties": {"weight": {"default": 1}}},
            },
            "auth": {"default": {"type": "none"}, "oneOf": [{"properties": {"x": {"default": 1}}}]},
        },
    }
    given = {"check": {}, "hosts": [{"url": "a"}, {"url": "b", "weight": 5}], "auth": {}}
    assert with_defaults(schema, given) == {
        "timeout_ms": 10000,
        "check": {"path": "/"},
        "hosts": [{"url": "a", "weight": 1}, {"url": "b", "weight": 5}],
        "auth": {},  # a oneOf branch is the value's to choose: not followed
    }
    assert given == {"check": {}, "hosts": [{"url": "a"}, {"url": "b", "weight": 5}], "auth": {}}
    assert with_defaults(schema, "not an object") == "not an object"


# --- the declarative connector -------------------------------------------------------------


class Tickets(DeclarativeConnector):
    """Open tickets in Acme.

    Not part of the description.
    """

    name = "acme"
    type = "api"
    config_fields = {
        "base_url": url(default="https://acme.example"),
        "api_token": secret(),
        "timeout_ms": {"type": "integer", "default": 2500},
    }

    @action(input={"title": {"type": "string"}, "priority": {"enum": [1, 2, 3], "default": 2}})
    def create_ticket(self, config: JSON, ticket: JSON, ctx: ConnectorContext) -> JSON:
        """Open a ticket.

        Second paragraph.
        """
        return {"config": config, "ticket": ticket, "as": ctx.connector, "timeout": ctx.timeout}

    @action()
    def ping(self, config: JSON, nothing: JSON, ctx: ConnectorContext) -> JSON:
        """Answer pong."""
        return {"pong": True}

    def test(self, config: JSON, ctx: ConnectorContext) -> TestResult:
        return TestResult(True, "ok", {"config": config, "timeout": ctx.timeout})

    def handle_inbound(
        self, request: InboundRequest, config: JSON, ctx: ConnectorContext
    ) -> InboundResult:
        return InboundResult(None, [], {"base_url": config["base_url"], "as": ctx.connector})


def test_a_declarative_connector_derives_what_the_full_form_spells_out() -> None:
    described = Tickets().to_dict()
    assert described["description"] == "Open tickets in Acme."
    assert described["config_schema"]["required"] == ["api_token"]
    assert described["version"] == UNKNOWN_VERSION  # this module is no installed distribution
    assert described["inbound"] is True
    assert described["actions"] == {
        "create_ticket": {
            "description": "Open a ticket.",
            "input_schema": object_schema(
                {"title": {"type": "string"}, "priority": {"enum": [1, 2, 3], "default": 2}}
            ),
        },
        "ping": {"description": "Answer pong.", "input_schema": object_schema({})},
    }
    assert isinstance(Tickets(), Connector)


def test_handlers_test_and_inbound_see_defaults_and_a_named_context(
    ctx: ConnectorContext,
) -> None:
    plain = ConnectorContext(http=ctx.http)
    tickets = Tickets()
    ran = tickets.actions["create_ticket"].handler({"api_token": "t"}, {"title": "x"}, plain)
    assert ran == {
        "config": {"api_token": "t", "base_url": "https://acme.example", "timeout_ms": 2500},
        "ticket": {"title": "x", "priority": 2},
        "as": "acme",
        "timeout": 2.5,
    }
    assert tickets.test({"api_token": "t", "timeout_ms": 900}, plain).data == {
        "config": {"api_token": "t", "timeout_ms": 900, "base_url": "https://acme.example"},
        "timeout": 0.9,
    }
    inbound = tickets.handle_inbound(InboundRequest("POST", {}, b"{}"), {"api_token": "t"}, plain)
    assert inbound.response == {"base_url": "https://acme.example", "as": "acme"}
    with PluginHarness(types.SimpleNamespace(register_connectors=provides(Tickets))) as harness:
        outcome = harness.run_action("create_ticket", {"api_token": "t"}, {"title": "x"})
        assert outcome.success and outcome.result["ticket"] == {"title": "x", "priority": 2}
        refused = harness.run_action("create_ticket", {"api_token": "t"}, {"title": 1})
        assert refused.error == "invalid input: title: must be of type string"


def test_the_full_forms_actions_dict_gets_defaults_too() -> None:
    def handler(config: JSON, given: JSON, ctx: ConnectorContext) -> JSON:
        return {"config": config, "as": ctx.connector}

    from app.connectors import Action

    class Full(DeclarativeConnector):
        name = "full"
        config_fields = {"region": {"type": "string", "default": "eu"}}
        actions = {"run": Action({"type": "object"}, handler, "Run.")}

    plain = ConnectorContext(http=requests.Session())
    assert Full.actions["run"].handler({}, {}, plain) == {"config": {"region": "eu"}, "as": "full"}
    assert Full().actions["run"].description == "Run."


def test_mistakes_in_a_declaration_fail_at_import() -> None:
    with pytest.raises(TypeError, match="config_fields or config_schema"):

        class Both(DeclarativeConnector):
            config_fields: dict[str, Any] = {}
            config_schema: dict[str, Any] = {"type": "object"}

    with pytest.raises(TypeError, match="would hide Connector.test"):

        class Hiding(DeclarativeConnector):
            @action()
            def test(self, config: JSON, given: JSON, ctx: ConnectorContext) -> JSON:  # type: ignore[override]
                return {}

    with pytest.raises(TypeError, match="not both"):
        action(input={}, input_schema={"type": "object"})


def test_actions_are_inherited_and_a_plain_override_drops_one() -> None:
    class More(Tickets):
        name = "more"

        def ping(self, config: JSON, nothing: JSON, ctx: ConnectorContext) -> JSON:
            return {}

    assert list(More().actions) == ["create_ticket"]


class Alerts(DeclarativeConnector):
    """Sends alerts."""

    name = "alerts"
    type = "notification"


def test_several_connectors_per_module() -> None:
    module = types.SimpleNamespace(register_connectors=provides(Tickets, Alerts))
    with PluginHarness(module, name="two") as harness:
        assert harness.connector("acme").name == "acme"
        assert harness.connector("alerts").description == "Sends alerts."
        assert harness.test({}, connector="alerts").message == (
            "configuration is valid (it has no URL to check)"
        )


def test_the_version_is_the_installed_distributions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = (
        "from app.connectors import DeclarativeConnector, provides\n"
        "class Versioned(DeclarativeConnector):\n"
        "    name = 'versioned'\n"
        "class Pinned(DeclarativeConnector):\n"
        "    name = 'pinned'\n"
        "    version = '9.9.9'\n"
        "register_connectors = provides(Versioned, Pinned)\n"
    )
    site = install_plugin(
        tmp_path,
        "switchboard-versioned",
        "2.3.4",
        {"switchboard_versioned": source},
        {"versioned": "switchboard_versioned"},
    )
    monkeypatch.syspath_prepend(str(site))
    try:
        with PluginHarness("versioned") as harness:
            assert harness.connector("versioned").version == "2.3.4"
            assert harness.connector("pinned").version == "9.9.9"
    finally:
        sys.modules.pop("switchboard_versioned", None)


# --- the default test: reachability of the URL fields --------------------------------------


class Hooks(DeclarativeConnector):
    name = "hooks"
    config_fields = {
        "webhook_url": secret_url(),
        "mirrors": optional({"type": "array", "items": url()}),
    }


@pytest.fixture
def hooks() -> Iterator[PluginHarness]:
    with PluginHarness(types.SimpleNamespace(register_connectors=provides(Hooks))) as harness:
        yield harness


def test_the_default_test_checks_every_url_field_through_the_guard(
    hooks: PluginHarness, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/hook/SECRET", method="HEAD").respond_with_data("", status=405)
    httpserver.expect_request("/mirror", method="HEAD").respond_with_data("")
    config = {
        "webhook_url": httpserver.url_for("/hook/SECRET"),
        "mirrors": [httpserver.url_for("/mirror")],
    }
    result = hooks.test(config)
    assert (result.success, result.message) == (True, "reachable: webhook_url, mirrors.0")
    assert result.data == {"answered": {"webhook_url": 405, "mirrors.0": 200}}
    [(request, _)] = [(r, a) for r, a in httpserver.log if r.path == "/hook/SECRET"]
    assert request.method == "HEAD"  # nothing is posted to a webhook by a test

    closed = hooks.test({"webhook_url": closed_port_url() + "/hook/SECRET"})
    assert (closed.success, closed.message) == (
        False,
        "webhook_url is unreachable (ConnectionError)",
    )
    with PluginHarness(
        types.SimpleNamespace(register_connectors=provides(Hooks)), allowed_networks=()
    ) as shut:
        blocked = shut.test(config)
    assert not blocked.success and blocked.message.startswith("webhook_url: refused to connect")
    assert blocked.message.endswith("allow it with SWITCHBOARD_ALLOWED_NETWORKS")
    assert "SECRET" not in closed.message + blocked.message


# --- ConnectorContext.request: the error policy ------------------------------------------


def _refused(call: Any) -> ActionError:
    with pytest.raises(ActionError) as raised:
        call()
    return raised.value


def test_request_returns_the_json_answer(ctx: ConnectorContext, httpserver: HTTPServer) -> None:
    httpserver.expect_oneshot_request(
        "/tickets", method="POST", json={"title": "x"}, headers={"X-Key": "k"}, query_string="a=1"
    ).respond_with_json({"id": "T-1"}, status=201)
    answer = ctx.request(
        "POST",
        httpserver.url_for("/tickets"),
        json={"title": "x"},
        headers={"X-Key": "k"},
        params={"a": 1},
    )
    assert answer == {"id": "T-1"}
    httpserver.expect_oneshot_request("/p").respond_with_data(
        '{"ok": true}', content_type="application/problem+json"
    )
    assert ctx.post_json(httpserver.url_for("/p"), {}) == {"ok": True}
    httpserver.expect_oneshot_request("/empty").respond_with_data("", status=202)
    assert ctx.post_json(httpserver.url_for("/empty"), {}) is None
    httpserver.expect_oneshot_request("/text").respond_with_data("1")  # Teams' old answer
    assert ctx.post_json(httpserver.url_for("/text"), {}) is None
    httpserver.expect_oneshot_request("/bad").respond_with_data(
        "{nope", content_type="application/json"
    )
    bad = _refused(lambda: ctx.post_json(httpserver.url_for("/bad"), {}))
    assert (bad.message, bad.retryable) == ("acme answered HTTP 200 with malformed JSON", False)
    httpserver.check_assertions()


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [(429, {"Retry-After": "7"}, 7.0), (503, {}, None), (500, {"Retry-After": "2"}, 2.0)],
)
def test_429_and_5xx_are_retried_after_retry_after(
    ctx: ConnectorContext,
    httpserver: HTTPServer,
    status: int,
    headers: dict[str, str],
    retry_after: float | None,
) -> None:
    httpserver.expect_request("/x").respond_with_data("busy", status=status, headers=headers)
    error = _refused(lambda: ctx.post_json(httpserver.url_for("/x"), {}))
    assert (error.message, error.retryable, error.retry_after) == (
        f"acme answered HTTP {status}",
        True,
        retry_after,
    )


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (
            '{"message": "Event object is invalid"}',
            "application/json",
            "acme error: Event object is invalid",
        ),
        (
            '{"error": "invalid_grant", "error_description": "expired"}',
            "application/json",
            "acme error: expired",
        ),
        ("channel_not_found", "text/plain", "acme error: channel_not_found"),
        ("  two\nlines\x00 ", "text/plain", "acme error: two lines"),
        ("<html><h1>Not Found</h1></html>", "text/html", "acme answered HTTP 404"),
        ("The URL /hook/SECRET was not found", "text/plain", "acme answered HTTP 404"),
        ("", "text/plain", "acme answered HTTP 404"),
        ('{"ok": false}', "application/json", "acme answered HTTP 404"),
    ],
)
def test_other_4xx_are_final_with_the_reason_unless_it_quotes_the_url(
    ctx: ConnectorContext, httpserver: HTTPServer, body: str, content_type: str, message: str
) -> None:
    httpserver.expect_request("/hook/SECRET").respond_with_data(
        body, status=404, content_type=content_type
    )
    error = _refused(lambda: ctx.post_json(httpserver.url_for("/hook/SECRET"), {}))
    assert (error.message, error.retryable, error.retry_after) == (message, False, None)


@pytest.mark.parametrize(
    "reason",
    ["invalid token tok-1234567890", "unknown routing key " + "R" * 32, "no hook /hook/SECRET"],
)
def test_a_reason_quoting_a_header_or_body_secret_is_dropped(
    ctx: ConnectorContext, httpserver: HTTPServer, reason: str
) -> None:
    httpserver.expect_request("/hook/SECRET").respond_with_json({"message": reason}, status=401)
    error = _refused(
        lambda: ctx.post_json(
            httpserver.url_for("/hook/SECRET"),
            {"event": {"routing_key": "R" * 32}},
            headers={"Authorization": "Bearer tok-1234567890"},
        )
    )
    assert error.message == "acme answered HTTP 401"


def test_redirects_are_not_followed(ctx: ConnectorContext, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/old").respond_with_data(
        "", status=301, headers={"Location": httpserver.url_for("/new")}
    )
    error = _refused(lambda: ctx.request("GET", httpserver.url_for("/old")))
    assert (error.message, error.retryable) == (
        "acme answered HTTP 301 (redirects are not followed)",
        False,
    )
    assert [request.path for request, _ in httpserver.log] == ["/old"]


def test_unreachable_and_slow_services_are_retried_and_the_url_never_quoted(
    ctx: ConnectorContext,
) -> None:
    closed = _refused(lambda: ctx.post_json(closed_port_url() + "/hook/SECRET", {}))
    assert (closed.message, closed.retryable) == ("acme is unreachable (ConnectionError)", True)
    slow = Receiver(lambda request, n: (time.sleep(1), (200, {}, b""))[1])
    try:
        late = _refused(lambda: ctx.post_json(slow.url + "/hook/SECRET", {}, timeout=0.2))
    finally:
        slow.close()
    assert (late.message, late.retryable) == ("acme did not answer within 0.2 s", True)
    invalid = _refused(lambda: ctx.request("GET", "http:///SECRET"))
    assert (invalid.message, invalid.retryable) == (
        "the request to acme is invalid (InvalidURL)",
        False,
    )


def test_a_destination_the_guard_refuses_is_final() -> None:
    peer = Receiver()
    try:
        with make_session(()) as closed:
            shut = ConnectorContext(http=closed)
            error = _refused(lambda: shut.post_json(peer.url + "/hook/SECRET", {}))
    finally:
        peer.close()
    assert not error.retryable and refused_by_guard(error)
    assert error.message == (
        "refused to connect to 127.0.0.1: loopback address; "
        "the operator can allow it with SWITCHBOARD_ALLOWED_NETWORKS"
    )
    assert peer.requests == []


def test_an_unbound_context_names_the_host_and_uses_ten_seconds(httpserver: HTTPServer) -> None:
    class Recording(requests.Session):
        timeouts: list[Any] = []

        def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
            self.timeouts.append(kwargs.get("timeout"))
            return super().request(method, url, *args, **kwargs)

    httpserver.expect_request("/x").respond_with_data("", status=503)
    with Recording() as session:
        error = _refused(
            lambda: ConnectorContext(http=session).post_json(httpserver.url_for("/x"), {})
        )
    assert error.message == "localhost answered HTTP 503"
    assert Recording.timeouts == [10.0]
