"""Switchboard: an integrations service — REST API, signed webhooks, connector plugins, gateway.

``create_app`` builds the Flask app. Connector plugins import ``hookimpl`` from here::

    from app import hookimpl
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.connectors.hookspecs import hookimpl

__all__ = ["create_app", "hookimpl"]
__version__ = "0.1.0"
EXIT_CONFIG_ERROR = 3


def create_app(test_config: dict[str, Any] | None = None) -> Any:
    """Build the Switchboard Flask application.

    A setting the service cannot run with stops startup with one line on stderr naming the
    variable, the value and the accepted format, and exit code 3: the code gunicorn's arbiter
    takes for "worker failed to boot", so it halts instead of respawning workers forever.
    """
    from app.config import ConfigError
    from app.factory import build_app

    try:
        return build_app(test_config)
    except ConfigError as exc:
        print(f"switchboard: configuration error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CONFIG_ERROR) from None


def __getattr__(name: str) -> Any:
    """``hookimpl`` is imported when a plugin asks for it: importing ``app`` alone (gunicorn's
    config module, in the master) must not import the HTTP stack before gevent patches it."""
    if name == "hookimpl":
        from app.connectors.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
