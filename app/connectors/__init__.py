"""Connectors: the plugin world — contract, hookspecs, registry, runtime, jobs, API, inbound.

This package is Switchboard's public API for connector authors (documented in
``docs/plugins.md``): ``from app.connectors import …`` re-exports the full form from
:mod:`app.connectors.contract` (``Connector``, ``Action``, …), the short form from
:mod:`app.connectors.declarative` (``DeclarativeConnector``, ``action``, ``provides``) and its
field shortcuts from :mod:`app.connectors.jsonschemas` (``secret``, ``url``, …). The other
modules are the service's side of the contract.
"""

from app.connectors.contract import (
    ANY,
    CONNECTOR_TYPES,
    DEFAULT_TIMEOUT_SECONDS,
    Action,
    ActionError,
    ActionHandler,
    BlockedDestination,
    Connector,
    ConnectorContext,
    Event,
    EventSpec,
    InboundRejected,
    InboundRequest,
    InboundResult,
    TestResult,
    TokenSource,
    TokenUnavailable,
    config_errors,
    parse_retry_after,
    replace_secrets,
    secret_paths,
    timeout_seconds,
    url_paths,
)
from app.connectors.declarative import DeclarativeConnector, action, provides
from app.connectors.jsonschemas import optional, secret, secret_url, url

__all__ = [
    "ANY",
    "CONNECTOR_TYPES",
    "DEFAULT_TIMEOUT_SECONDS",
    "Action",
    "ActionError",
    "ActionHandler",
    "BlockedDestination",
    "Connector",
    "ConnectorContext",
    "DeclarativeConnector",
    "Event",
    "EventSpec",
    "InboundRejected",
    "InboundRequest",
    "InboundResult",
    "TestResult",
    "TokenSource",
    "TokenUnavailable",
    "action",
    "config_errors",
    "optional",
    "parse_retry_after",
    "provides",
    "replace_secrets",
    "secret",
    "secret_paths",
    "secret_url",
    "timeout_seconds",
    "url",
    "url_paths",
]
