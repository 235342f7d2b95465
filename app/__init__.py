"""Switchboard: an integrations service — REST API, signed webhooks, connector plugins, gateway.

``create_app`` builds the Flask app. Connector plugins import ``hookimpl`` from here::

    from app import hookimpl
"""

from __future__ import annotations

from typing import Any

from app.connectors.hookspecs import hookimpl

__all__ = ["create_app", "hookimpl"]
__version__ = "0.1.0"


def create_app(test_config: dict[str, Any] | None = None) -> Any:
    """Build the Switchboard Flask application."""
    from app.factory import build_app

    return build_app(test_config)
