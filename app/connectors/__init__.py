"""Connectors: the plugin world — contract, hookspecs, registry, runtime, jobs, API, inbound.

This package is Switchboard's public API for connector authors: ``from app.connectors import
Connector, Action, …`` re-exports :mod:`app.connectors.contract` (documented in
``docs/plugins.md``). The other modules are the service's side of the contract.
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
    "Event",
    "InboundRejected",
    "InboundRequest",
    "InboundResult",
    "TestResult",
    "TokenSource",
    "TokenUnavailable",
    "config_errors",
    "parse_retry_after",
    "replace_secrets",
    "secret_paths",
    "timeout_seconds",
    "url_paths",
]
