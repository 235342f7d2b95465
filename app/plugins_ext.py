"""Binds the connector plugin registry to the Flask app."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Load connector plugins (filled in by the connectors work)."""
    app.extensions.setdefault("plugins", None)
