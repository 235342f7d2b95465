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


def require_connector(provider: str) -> Connector:
    """The loaded connector named ``provider``, or a 422 naming the field."""
    connector = get_registry().get(provider)
    if connector is None:
        available = ", ".join(sorted(get_registry().connectors())) or "none"
        raise Problem(
            422,
            f"Unknown provider {provider!r}; installed connectors: {available}.",
            errors={"provider": [f"no loaded connector named {provider!r}"]},
        )
    return connector


def connector_context(integration_id: str | None) -> ConnectorContext:
    """What a connector call gets: the guarded HTTP session, its integration, a logger, tokens.

    ``tokens`` is what ``app.oauth`` bound in ``app.extensions["oauth_tokens"]``, so the plugin
    world reaches OAuth2 connections without importing the package that manages them.
    """
    return ConnectorContext(
        http=outbound_session(),
        integration_id=integration_id,
        logger=logging.getLogger(f"switchboard.connector.{integration_id or 'none'}"),
        tokens=current_app.extensions.get("oauth_tokens"),
    )
