"""Binds the connector plugin registry to the Flask app, and the helpers views use with it."""

from __future__ import annotations

import logging

from flask import Flask, current_app

from app.connectors.contract import Connector, ConnectorContext
from app.connectors.registry import PluginRegistry
from app.outbound.session import outbound_session
from app.web.problems import Problem


def init_app(app: Flask) -> None:
    """Load installed connector plugins (restricted by ``SWITCHBOARD_PLUGINS`` when set)."""
    registry = PluginRegistry()
    registry.load_entry_points(allow=app.config["PLUGINS"])
    app.extensions["plugins"] = registry


def get_registry() -> PluginRegistry:
    """The current app's plugin registry."""
    registry: PluginRegistry = current_app.extensions["plugins"]
    return registry


def unavailable(provider: str) -> str:
    """Why no connector ``provider`` is loaded: its load error, or that it is not installed."""
    failure = get_registry().failure(provider)
    if failure is not None:
        return f"connector {provider!r} failed to load: {failure}"
    return f"connector {provider!r} is not loaded (is its plugin installed and allowed?)"


def require_connector(provider: str, *, stored: bool = False) -> Connector:
    """The loaded connector named ``provider``.

    Otherwise a 503 when the connector is installed but failed to load, or when ``stored`` (an
    existing integration's connector is gone): the server is at fault and fixing the plugin
    makes the same call work. Else a 422 naming the ``provider`` field the caller sent.
    """
    connector = get_registry().get(provider)
    if connector is not None:
        return connector
    if stored or get_registry().failure(provider) is not None:
        raise Problem(503, f"The {unavailable(provider)}; retry once it is fixed.")
    available = ", ".join(sorted(get_registry().connectors())) or "none"
    raise Problem(
        422,
        f"Unknown provider {provider!r}; installed connectors: {available}.",
        errors={"provider": [f"no loaded connector named {provider!r}"]},
    )


def connector_context(integration_id: str | None, tenant_id: str) -> ConnectorContext:
    """What a connector call gets: the guarded HTTP session, its integration, a logger, tokens.

    ``tokens`` is what ``app.oauth`` bound in ``app.extensions["oauth_tokens"]``, so the plugin
    world reaches OAuth2 connections without importing the package that manages them; it is
    bound to ``tenant_id``, so a connector reaches its own tenant's connections only.
    """
    source = current_app.extensions.get("oauth_tokens")
    tokens = None
    if source is not None:

        def tokens(target: str, rejected: str | None) -> str:
            return str(source(tenant_id, target, rejected))

    return ConnectorContext(
        http=outbound_session(),
        integration_id=integration_id,
        logger=logging.getLogger(f"switchboard.connector.{integration_id or 'none'}"),
        tokens=tokens,
    )
