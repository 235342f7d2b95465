"""The application factory: configuration, extensions, blueprints, request plumbing."""

from __future__ import annotations

import os
import re
import time
import uuid
from typing import Any

import click
from flask import Flask, Response, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from app import cli
from app.auth import access
from app.config import load_config
from app.connectors import extension as connectors_extension
from app.limits import enforce as rate_limits
from app.logs.access import log_request
from app.logs.structured import bind_request_id, configure_logging
from app.metrics import http as http_metrics
from app.oauth import tokens as oauth_tokens
from app.store import db, secretbox
from app.store import redis as redis_store
from app.web import cors, docs, hygiene, problems
from app.web.api import Api
from app.web.serving import cooperative

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _resource_modules() -> tuple[Any, ...]:
    from app.alerts import resources as alerts
    from app.api_keys import resources as api_keys
    from app.auth import resources as auth
    from app.connectors import inbound
    from app.connectors import resources as connectors
    from app.console import resources as portal_sessions
    from app.events import resources as publishing
    from app.gateway import resources as gateway
    from app.health import resources as health
    from app.integrations import resources as integrations
    from app.logs import resources as logs
    from app.metrics import resources as metrics
    from app.oauth import resources as oauth
    from app.stream import resources as stream
    from app.tenants import resources as tenants
    from app.webhooks import resources as webhooks

    return (
        health,
        auth,
        api_keys,
        integrations,
        connectors,
        webhooks,
        publishing,
        inbound,
        gateway,
        logs,
        oauth,
        metrics,
        stream,
        alerts,
        tenants,
        portal_sessions,
    )


def _page_blueprints() -> tuple[Any, ...]:
    """The server-rendered pages: the tenant portal and the console."""
    from app.console import console, portal

    return (portal.bp, console.bp)


def build_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Create and configure an app; ``test_config`` overrides environment configuration."""
    app = Flask(
        "app",
        instance_path=os.environ.get("SWITCHBOARD_INSTANCE_PATH") or None,
        instance_relative_config=True,
        static_folder=None,
    )
    settings = load_config(app.instance_path, test_config)
    app.config.update(
        API_TITLE="Switchboard",
        API_VERSION="0.1.0",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="api/v1/openapi.json",
        API_SPEC_OPTIONS=_spec_options(),
        JSON_SORT_KEYS=False,
    )
    app.config.update({k: v for k, v in (test_config or {}).items() if k not in settings})
    app.config.update(settings)
    configure_logging(_log_level(app), app.config["LOG_FORMAT"], app.config["ACCESS_LOG"])
    if app.config["TRUSTED_PROXY_HOPS"]:
        hops = app.config["TRUSTED_PROXY_HOPS"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]

    db.init_app(app, cooperative=cooperative())
    redis_store.init_app(app)
    secretbox.init_app(app)
    problems.init_app(app)
    hygiene.init_app(app)
    cors.init_app(app)
    docs.init_app(app)
    connectors_extension.init_app(app)
    rate_limits.init_app(app)
    access.init_app(app)
    oauth_tokens.init_app(app)
    http_metrics.init_app(app)
    _init_request_ids(app)

    api = Api(app)
    for module in _resource_modules():
        api.register_blueprint(module.blp)
    app.extensions["api"] = api
    for pages in _page_blueprints():
        app.register_blueprint(pages)
    cli.init_app(app)
    return app


def _log_level(app: Flask) -> str:
    """``LOG_LEVEL``; but a ``flask`` command (a tool, not a server: ``dev``, ``openapi``, ``db``)
    logs only what goes wrong unless ``SWITCHBOARD_LOG_LEVEL`` is set."""
    if "SWITCHBOARD_LOG_LEVEL" not in os.environ and click.get_current_context(silent=True):
        return "WARNING"
    return str(app.config["LOG_LEVEL"])


def _spec_options() -> dict[str, Any]:
    return {
        "info": {
            "description": "Manage integrations, API keys and webhooks. Authenticate with "
            "`Authorization: Bearer <key>` or `X-API-Key: <key>`; errors are RFC 9457 "
            "`application/problem+json`.",
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "sb_live_…"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
        },
        "servers": [{"url": "/"}],
    }


def _init_request_ids(app: Flask) -> None:
    @app.before_request
    def _assign_request_id() -> None:
        g.request_started = time.perf_counter()
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        bind_request_id(g.request_id)  # log lines and enqueued jobs carry it

    @app.after_request
    def _echo_request_id(response: Response) -> Response:
        if g.get("request_id"):
            response.headers["X-Request-Id"] = g.request_id
        return log_request(response)

    @app.teardown_request
    def _unbind_request_id(exc: BaseException | None) -> None:
        bind_request_id(None)


def release_app(app: Flask) -> None:
    """Close the app's pooled connections (HTTP and Redis); used when an app is discarded."""
    logs = app.extensions.get("gateway_log_writer")
    if logs is not None:  # its queued rows are written first: they are history, not counters
        logs.close()
    session = app.extensions.get("outbound_session")
    if session is not None:
        session.close()
    client = app.extensions.get("redis")
    if client is not None:
        client.close()
    hub = app.extensions.get("stream_hub")
    if hub is not None:
        hub.stop()
    publisher = app.extensions.get("stream_publisher")
    if publisher is not None:
        publisher.close()
    usage = app.extensions.get("usage_buffer")
    if usage is not None:  # its counts die with the app: no flush at exit
        usage.close()
