"""Errors as problem+json, health, CORS, request ids, and the OpenAPI document."""

from __future__ import annotations

import json
from pathlib import Path

import peewee
import pytest
import redis

from app import create_app
from app.cli import render_spec

PROBLEM = "application/problem+json"


def test_unknown_route_and_method(client, api):
    res = client.get("/nope")
    assert res.status_code == 404 and res.content_type == PROBLEM
    assert res.json["title"] == "Not Found" and res.json["instance"] == "/nope"
    res = api.put("/api/v1/logs", json={})
    assert res.status_code == 405 and res.content_type == PROBLEM
    assert "GET" in res.headers["Allow"]


def test_oversized_and_malformed_bodies(api):
    res = api.post(
        "/api/v1/integrations",
        data=b"x" * (2 * 1024 * 1024),
        headers={"Content-Type": "application/json"},
    )
    assert res.status_code == 413 and res.content_type == PROBLEM
    res = api.post(
        "/api/v1/integrations", data=b'{"name": ', headers={"Content-Type": "application/json"}
    )
    assert res.status_code == 400 and res.content_type == PROBLEM
    assert "Traceback" not in res.text


def test_unexpected_errors_hide_the_trace(app):
    from flask import Blueprint

    broken = create_app({**app.config})
    bp = Blueprint("boom", __name__)

    @bp.route("/boom")
    def boom():
        raise RuntimeError("secret internals")

    broken.register_blueprint(bp)
    res = broken.test_client().get("/boom")
    assert res.status_code == 500 and res.content_type == PROBLEM
    assert "secret internals" not in res.text and "Traceback" not in res.text


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (lambda: peewee.OperationalError("could not connect to server: Connection refused"), 503),
        (lambda: peewee.OperationalError("database is locked"), 503),
        (
            lambda: redis.exceptions.ReadOnlyError("You can't write against a read only replica"),
            503,
        ),
        (lambda: peewee.OperationalError("no such column: t1.nope"), 500),  # a bug, not an outage
    ],
)
def test_store_errors_are_503_only_when_the_store_is_away(app, error, status):
    from flask import Blueprint

    broken = create_app({**app.config})
    bp = Blueprint("store", __name__)

    @bp.route("/store")
    def store():
        raise error()

    broken.register_blueprint(bp)
    res = broken.test_client().get("/store")
    assert res.status_code == status and res.content_type == PROBLEM
    assert ("Retry-After" in res.headers) == (status == 503)


def test_health_and_ready(client, app):
    assert client.get("/api/v1/health").json == {"status": "ok"}
    ready = client.get("/api/v1/ready")  # no worker, not required here (test_worker_faults)
    assert ready.status_code == 200 and ready.json["workers"] == []
    assert ready.json["checks"] == {
        "database": "ok",
        "redis": "ok",
        "workers": "none live",
        "dispatch": "ok",
    }
    down = create_app({**app.config, "REDIS_URL": "redis://127.0.0.1:1/0"})
    res = down.test_client().get("/api/v1/ready")
    assert res.status_code == 503 and res.content_type == PROBLEM
    assert res.json["checks"]["redis"] == "unavailable"


def test_request_id_is_echoed(client):
    res = client.get("/api/v1/health", headers={"X-Request-Id": "abc-123"})
    assert res.headers["X-Request-Id"] == "abc-123"
    res = client.get("/api/v1/health", headers={"X-Request-Id": "<script>" * 20})
    assert res.headers["X-Request-Id"] != "<script>" * 20 and len(res.headers["X-Request-Id"]) == 32


def test_cors(app):
    cors_app = create_app({**app.config, "CORS_ORIGINS": ["https://admin.example.com"]})
    c = cors_app.test_client()
    pre = c.options(
        "/api/v1/integrations",
        headers={"Origin": "https://admin.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert pre.status_code == 200
    assert pre.headers["Access-Control-Allow-Origin"] == "https://admin.example.com"
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in pre.headers
    other = c.get("/api/v1/health", headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_swagger_ui_and_spec(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/api/v1/openapi.json").json
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer" and schemes["apiKeyHeader"]["in"] == "header"
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            assert op.get("summary"), f"{method} {path} has no summary"
            if op.get("security"):
                assert {"401", "403"} <= set(op["responses"]), f"{method} {path}"


def test_committed_openapi_is_current(app):
    committed = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"
    with app.app_context():
        live = render_spec()
    assert committed.exists(), "run `flask --app app openapi write`"
    assert json.loads(committed.read_text()) == json.loads(live), (
        "openapi/openapi.json is stale: run `flask --app app openapi write`"
    )


@pytest.mark.parametrize("path", ["/api/v1/integrations", "/api/v1/api-keys", "/api/v1/logs"])
def test_lists_require_auth(client, path):
    res = client.get(path)
    assert res.status_code == 401 and res.content_type == PROBLEM


def test_nul_characters_are_refused_not_500(api):
    res = api.get("/api/v1/integrations?q=a%00b")
    assert res.status_code == 400 and res.content_type == PROBLEM
    res = api.post(
        "/api/v1/event-types",
        data='{"name": "order.paid", "description": "x\\u0000y"}',
        headers={"Content-Type": "application/json"},
    )
    assert res.status_code == 400 and "NUL" in res.json["detail"]
    assert api.get("/api/v1/event-types").json["total"] > 0  # nothing half-written
    assert all(i["name"] != "order.paid" for i in api.get("/api/v1/event-types").json["items"])


def test_nul_in_path_and_deep_json_are_400(api):
    assert api.get("/api/v1/integrations/int_%00").status_code == 400
    # Every operation with a path parameter documents that 400 (the spec matches behaviour).
    spec = api.get("/api/v1/openapi.json").json
    for path, item in spec["paths"].items():
        if any(p["in"] == "path" for p in item.get("parameters", [])):
            for method, operation in item.items():
                if method != "parameters":
                    assert "400" in operation["responses"], (method, path)
    assert api.delete("/api/v1/alert-rules/%00").status_code == 400
    deep = "[" * 100_000 + "]" * 100_000
    res = api.post("/api/v1/event-types", data=deep, headers={"Content-Type": "application/json"})
    assert res.status_code == 400 and res.content_type == PROBLEM


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/api/v1/integrations", '{"name": "a\\ud800", "type": "api", "provider": "rest"}'),
        ("/api/v1/auth/login", '{"email": "a@example.com", "password": "\\udfff"}'),
        ("/api/v1/event-types", '{"name": "order.paid", "description": "\\ud800x"}'),
        ("/api/v1/event-types", '{"name": "order.paid", "n": 1' + "0" * 5000 + "}"),
        ("/api/v1/integrations", '{"name": "x", "type": "api", "metadata": {"n": NaN}}'),
        ("/api/v1/events", '{"type": "order.paid", "data": {"n": -Infinity}}'),
        ("/api/v1/events", '{"type": "order.paid", "data": {"n": 1e400}}'),
    ],
)
def test_json_that_only_python_accepts_is_a_400_problem(api, url, body):
    res = api.post(url, data=body, headers={"Content-Type": "application/json"})
    assert res.status_code == 400 and res.content_type == PROBLEM, res.text
    assert res.json["detail"].startswith("The body is not valid JSON")


def test_surrogate_pairs_still_work_and_output_is_strict_json(api, receiver):
    res = api.post("/api/v1/event-types", json={"name": "order.paid", "description": "🎉 paid"})
    assert res.status_code == 201 and res.json["description"] == "🎉 paid"
    assert api.post("/api/v1/event-types", json={"name": "x.y", "n": 10**4000}).status_code == 422
    # Nothing non-finite gets in, so lists and webhook bodies parse with a strict parser.
    listed = api.get("/api/v1/event-types")
    json.loads(listed.text, parse_constant=lambda name: pytest.fail(f"{name} in output"))


def test_whole_number_floats_are_integers_as_json_schema_says(api):
    key = api.post("/api/v1/api-keys", json={"name": "k", "permissions": ["logs:read"]}).json
    rotate = f"/api/v1/api-keys/{key['id']}/rotate"
    assert api.post(rotate, json={"grace_period_seconds": 779.0}).status_code == 200
    for wrong in (779.5, "779", True):
        res = api.post(rotate, json={"grace_period_seconds": wrong})
        assert res.status_code == 422 and "grace_period_seconds" in res.json["errors"], wrong


def test_the_spec_says_what_the_service_does(client, api, integration):
    spec = client.get("/api/v1/openapi.json").json["paths"]
    # No body is accepted (default grace period; nothing to change), and the spec says so.
    rotate = spec["/api/v1/api-keys/{key_id}/rotate"]["post"]["requestBody"]
    patch = spec["/api/v1/integrations/{integration_id}"]["patch"]["requestBody"]
    assert rotate.get("required") is not True and patch.get("required") is not True
    key = api.post("/api/v1/api-keys", json={"name": "k", "permissions": ["logs:read"]}).json
    assert api.post(f"/api/v1/api-keys/{key['id']}/rotate").status_code == 200
    assert api.patch(f"/api/v1/integrations/{integration['id']}").status_code == 200
    # The gateway passes the upstream's answer through, whatever its content type.
    gateway = spec["/api/v1/gateway/{integration_id}/{path}"]["get"]["responses"]
    assert "*/*" in gateway["200"]["content"] and "*/*" in gateway["default"]["content"]
    # Refusals the views make themselves are described where they happen.
    for path, word in [
        ("/api/v1/integrations", "provider"),
        ("/api/v1/api-keys", "expires_at"),
        ("/api/v1/events", "event type"),
    ]:
        assert word in spec[path]["post"]["responses"]["422"]["description"], path
    assert api.post("/api/v1/events", json={"type": "no.such", "data": {}}).status_code == 422
