"""Testing a connector plugin in its own repository, without a running Switchboard.

``PluginHarness`` loads a plugin through the same registry the service uses (so a hook typo, a
bad schema or a wrong ``type`` fails the test the way it would disable the plugin), and runs
its connectors the way the service does: ``test`` through the same guard against exceptions,
actions through the same input validation and outcome rules, outbound calls through the same
SSRF-guarded session. It needs no database, Redis or Flask app::

    from app.connectors.testing import PluginHarness

    def test_create_ticket(httpserver):
        with PluginHarness(switchboard_acme) as acme:
            outcome = acme.run_action("create_ticket", config, {"title": "Disk full"})
        assert outcome.success and outcome.result == {"id": "T-1"}
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from app.connectors.configs import api_config_errors
from app.connectors.contract import Connector, ConnectorContext, TestResult, config_errors
from app.connectors.registry import PluginLoadError, PluginRegistry
from app.connectors.runtime import ActionOutcome, run_handler
from app.outbound.guard import GuardedSession, make_session

__all__ = ["LOOPBACK", "ActionOutcome", "PluginHarness", "PluginLoadError"]

#: What the harness lets through the SSRF guard by default: local test peers only.
LOOPBACK = ("127.0.0.0/8", "::1/128")


class PluginHarness:
    """One plugin loaded as Switchboard loads it, with helpers to run its connectors.

    Args:
        plugin: the module (or object) holding the hook implementations, or the name of an
            installed entry point of group ``switchboard.connectors`` (checks your packaging).
        name: the plugin name to register a module under (default: its ``__name__``).
        allowed_networks: what the SSRF guard lets through, like
            ``SWITCHBOARD_ALLOWED_NETWORKS``; loopback by default so local peers answer, ``()``
            to see what an operator who opened nothing gets.

    Raises:
        PluginLoadError: the plugin, or one of its connectors, would be disabled by the
            service; the message is the reason ``GET /api/v1/connectors`` would show.
    """

    def __init__(
        self,
        plugin: object | str,
        *,
        name: str | None = None,
        allowed_networks: Iterable[str] = LOOPBACK,
    ) -> None:
        self.registry = PluginRegistry()
        if isinstance(plugin, str):
            self.registry.load_entry_points(allow=[plugin])
        else:
            self.registry.register(plugin, name or str(getattr(plugin, "__name__", plugin)))
        failures = [s.error or s.name for s in self.registry.statuses() if s.status == "error"]
        if failures:
            raise PluginLoadError("; ".join(failures))
        self.http: GuardedSession = make_session(tuple(allowed_networks))

    def __enter__(self) -> PluginHarness:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the outbound session's connections."""
        self.http.close()

    def connector(self, name: str | None = None) -> Connector:
        """The connector called ``name``, or the plugin's only connector."""
        connectors = self.registry.connectors()
        if name is None:
            if len(connectors) != 1:
                raise LookupError(f"the plugin has connectors {sorted(connectors)}: name one")
            return next(iter(connectors.values()))
        if name not in connectors:
            raise LookupError(f"no connector {name!r}; the plugin has {sorted(connectors)}")
        return connectors[name]

    def context(self, integration_id: str | None = "int_test") -> ConnectorContext:
        """A ``ConnectorContext`` like the service's: the guarded session and a logger."""
        return ConnectorContext(
            http=self.http,
            integration_id=integration_id,
            logger=logging.getLogger(f"switchboard.connector.{integration_id or 'none'}"),
        )

    def test(self, config: dict[str, Any], connector: str | None = None) -> TestResult:
        """Run the connector's ``test`` as ``POST /integrations/{id}/test`` does."""
        return self.registry.run_test(self.connector(connector), config, self.context())

    def run_action(
        self,
        action: str,
        config: dict[str, Any],
        action_input: dict[str, Any],
        connector: str | None = None,
    ) -> ActionOutcome:
        """Run one action attempt as a worker does; ``config`` must match the config schema.

        The outcome says how the attempt ended: ``success`` and ``result``, or ``error``,
        ``retryable`` and ``retry_after`` (what decides whether the service tries again).
        """
        chosen = self.connector(connector)
        errors = config_errors(chosen.config_schema, config)
        if errors:  # the service never runs an action with a config it would not have saved
            raise ValueError(f"config does not match {chosen.name!r}'s schema: {errors}")
        return run_handler(chosen, action, config, action_input, self.context())

    def api_config_errors(
        self, config: dict[str, Any], connector: str | None = None
    ) -> dict[str, list[str]]:
        """The ``errors`` the API answers (422) for an integration with this ``config``."""
        return api_config_errors(config_errors(self.connector(connector).config_schema, config))
