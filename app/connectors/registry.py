"""Finding, loading and guarding connector plugins.

Plugins are the entry points of group ``switchboard.connectors`` (the built-ins in ``plugins/``
are declared the same way in Switchboard's own ``pyproject.toml``). ``PluginRegistry`` loads
them one at a time so that a broken third-party plugin never stops the service or the others:

- A plugin that fails to import, whose hookimpls do not match the hookspecs, that implements a
  hook with an unknown name (a typo like ``register_conectors``), whose hook raises, or whose
  hook returns the wrong shape is *errored as a whole*: it is unregistered from pluggy, logged
  at ERROR with the plugin's name, and listed with ``status="error"`` by ``statuses()``.
- A connector that is invalid (bad name/type, invalid JSON Schema, undeclared event prefix) or
  whose name is already taken is errored on its own; the plugin's other connectors load.

The registry reads no environment: the core passes the allow-list (``SWITCHBOARD_PLUGINS``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import pluggy
from jsonschema import Draft202012Validator, SchemaError

import app.connectors.hookspecs as hookspecs
from app.connectors.contract import (
    CONNECTOR_TYPES,
    Action,
    Connector,
    ConnectorContext,
    EventSpec,
    TestResult,
    bind_context,
    config_errors,
    event_spec,
)
from app.connectors.payloads import payload_schema_errors
from app.store import jsoncodec

__all__ = ["CONNECTOR_NAME", "ENTRY_POINT_GROUP", "PluginRegistry", "PluginStatus"]

ENTRY_POINT_GROUP = "switchboard.connectors"

logger = logging.getLogger(__name__)

#: Connector names appear in URLs, event types and the database: keep them plain.
CONNECTOR_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_KNOWN_HOOKS = ", ".join(
    name for name, value in vars(hookspecs).items() if hasattr(value, "switchboard_spec")
)


@dataclass(frozen=True)
class PluginStatus:
    """One row of ``statuses()``: a loaded connector, or a plugin or connector that failed."""

    name: str  # the connector's name; the plugin's name when the plugin itself failed
    plugin: str  # the entry-point (registration) name
    status: Literal["loaded", "error"]
    version: str | None = None  # the connector's version
    distribution: str | None = None  # the installed package providing the plugin
    distribution_version: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form of this row."""
        return {
            "name": self.name,
            "plugin": self.plugin,
            "status": self.status,
            "version": self.version,
            "distribution": self.distribution,
            "distribution_version": self.distribution_version,
            "error": self.error,
        }


class PluginLoadError(Exception):
    """A plugin broke the contract; the message says how, naming the plugin."""


@dataclass
class _Plugin:
    name: str
    distribution: str | None
    distribution_version: str | None
    connectors: dict[str, Connector] = field(default_factory=dict)
    event_types: dict[str, EventSpec] = field(default_factory=dict)
    errored: list[PluginStatus] = field(default_factory=list)


class PluginRegistry:
    """The connectors available to this process, loaded from plugins through pluggy."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("switchboard")
        self.pm.add_hookspecs(hookspecs)
        self._plugins: dict[str, _Plugin] = {}
        self._failed: list[PluginStatus] = []

    # --- loading ------------------------------------------------------------------------

    def load_entry_points(
        self,
        allow: Collection[str] | None = None,
        *,
        entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
    ) -> None:
        """Load every installed plugin whose entry-point name is in ``allow`` (None: all)."""
        if entry_points is None:
            entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        seen: set[str] = set()
        for entry_point in entry_points:
            if allow is not None and entry_point.name not in allow:
                logger.info("plugin %r is installed but not enabled", entry_point.name)
                continue
            seen.add(entry_point.name)
            dist = entry_point.dist
            where = {
                "distribution": dist.name if dist else None,
                "distribution_version": dist.version if dist else None,
            }
            try:
                plugin = entry_point.load()
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin is only listed
                message = (
                    f"plugin {entry_point.name!r} could not import {entry_point.value}: {exc!r}"
                )
                self._fail(entry_point.name, message, **where)
                continue
            self.register(plugin, entry_point.name, **where)
        for name in sorted(set(allow or ()) - seen):
            self._fail(name, f"plugin {name!r} is listed in SWITCHBOARD_PLUGINS but not installed")

    def register(
        self,
        plugin: object,
        name: str,
        *,
        distribution: str | None = None,
        distribution_version: str | None = None,
    ) -> None:
        """Register one plugin (module or object with hookimpls); a broken one is errored."""
        where = {"distribution": distribution, "distribution_version": distribution_version}
        if name in self._plugins or self.pm.get_plugin(name) is not None:
            self._fail(name, f"another plugin is already registered as {name!r}", **where)
            return
        record = _Plugin(name, distribution, distribution_version)
        try:
            self.pm.register(plugin, name=name)
            self._check_hooks(plugin, name)
            results = self._call_hook(plugin, name, "register_connectors", list)
            record.event_types = self._event_types(plugin, name)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin is only listed
            if self.pm.get_plugin(name) is plugin:
                self.pm.unregister(name=name)
            message = str(exc)
            if not isinstance(exc, PluginLoadError):
                message = f"plugin {name!r} could not be registered: {exc!r}"
            self._fail(name, message, **where)
            return
        for connector in (connector for result in results for connector in result):
            self._add_connector(record, connector)
        self._plugins[name] = record
        logger.info(
            "plugin %r loaded: connectors %s", name, ", ".join(record.connectors) or "(none)"
        )

    def unregister(self, name: str) -> None:
        """Forget the plugin registered as ``name`` (loaded or errored) and its connectors."""
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin, name=name)
        self._plugins.pop(name, None)
        self._failed = [status for status in self._failed if status.plugin != name]

    def _fail(self, name: str, message: str, **where: Any) -> None:
        logger.error("plugin disabled: %s", message)
        self._failed.append(PluginStatus(name, name, "error", error=message, **where))

    def _check_hooks(self, plugin: object, name: str) -> None:
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            callers = self.pm.get_hookcallers(plugin) or []
            unknown = sorted(caller.name for caller in callers if not caller.has_spec())
            if not unknown:
                raise
            raise PluginLoadError(
                f"plugin {name!r} implements unknown hook {', '.join(unknown)} "
                f"(known hooks: {_KNOWN_HOOKS})"
            ) from exc

    def _call_hook(self, plugin: object, name: str, hook: str, kind: type) -> list[Any]:
        """Return what each of one plugin's ``hook`` implementations returned (each a ``kind``)."""
        results: list[Any] = []
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin is not plugin:
                continue
            try:
                result = impl.function()
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported as the plugin's error
                raise PluginLoadError(f"plugin {name!r}: {hook}() raised {exc!r}") from exc
            if not isinstance(result, kind):
                raise PluginLoadError(
                    f"plugin {name!r}: {hook}() must return a {kind.__name__}, "
                    f"not {type(result).__name__}"
                )
            results.append(result)
        return results

    def _event_types(self, plugin: object, name: str) -> dict[str, EventSpec]:
        event_types: dict[str, EventSpec] = {}
        for mapping in self._call_hook(plugin, name, "register_event_types", dict):
            for event_type, declared in mapping.items():
                problem = _event_type_problem(event_type, declared)
                if problem is not None:
                    raise PluginLoadError(f"plugin {name!r}: register_event_types(): {problem}")
                event_types[event_type] = event_spec(declared)
        return event_types

    def _add_connector(self, record: _Plugin, connector: Any) -> None:
        try:
            problem = _connector_problem(connector)
        except Exception as exc:  # noqa: BLE001 - a malformed connector is reported, not fatal
            problem = f"invalid connector: {exc!r}"
        label = getattr(connector, "name", None) or repr(connector)
        if problem is None:
            owner = next((p for p in self._plugins.values() if label in p.connectors), None)
            if owner is not None or label in record.connectors:
                problem = f"connector name {label!r} is already provided by plugin "
                problem += repr(owner.name if owner else record.name)
        if problem is None:
            record.connectors[label] = connector
            return
        logger.error("plugin %r: connector %s disabled: %s", record.name, label, problem)
        record.errored.append(
            PluginStatus(
                str(label),
                record.name,
                "error",
                version=getattr(connector, "version", None),
                distribution=record.distribution,
                distribution_version=record.distribution_version,
                error=problem,
            )
        )

    # --- queries ------------------------------------------------------------------------

    def connectors(self) -> dict[str, Connector]:
        """Return every loaded connector by name."""
        return {n: c for plugin in self._plugins.values() for n, c in plugin.connectors.items()}

    def get(self, name: str) -> Connector | None:
        """Return the loaded connector called ``name``, or None."""
        return self.connectors().get(name)

    def failure(self, name: str) -> str | None:
        """Why the connector (or plugin) called ``name`` failed to load, or None."""
        for status in self.statuses():
            if status.status == "error" and name in (status.name, status.plugin):
                return status.error or "unknown error"
        return None

    def statuses(self) -> list[PluginStatus]:
        """Return one row per loaded connector, errored connector and errored plugin."""
        rows = list(self._failed)
        for plugin in self._plugins.values():
            where = {
                "distribution": plugin.distribution,
                "distribution_version": plugin.distribution_version,
            }
            for name, connector in plugin.connectors.items():
                rows.append(PluginStatus(name, plugin.name, "loaded", connector.version, **where))
            rows.extend(plugin.errored)
            if not plugin.connectors and not plugin.errored:
                rows.append(PluginStatus(plugin.name, plugin.name, "loaded", **where))
        return sorted(rows, key=lambda row: (row.name, row.plugin))

    def event_types(self) -> dict[str, str]:
        """Return the event types connectors declare plus those plugins register (name ->
        description)."""
        return {name: spec.description for name, spec in self.event_specs().items()}

    def event_specs(self) -> dict[str, EventSpec]:
        """The same event types with their payload schemas and examples, if declared."""
        found: dict[str, EventSpec] = {}
        for plugin in self._plugins.values():
            for connector in plugin.connectors.values():
                for event_type, declared in connector.event_types.items():
                    found[event_type] = event_spec(declared)
        for plugin in self._plugins.values():
            for event_type, spec in plugin.event_types.items():
                found.setdefault(event_type, spec)
        return dict(sorted(found.items()))

    def run_test(
        self, connector: Connector, config: dict[str, Any], ctx: ConnectorContext
    ) -> TestResult:
        """Validate ``config`` and run ``connector.test``; any exception is a failed result.

        So is a result that the API could not answer with: not a ``TestResult``, or one whose
        ``data`` is not a JSON object.
        """
        errors = config_errors(connector.config_schema, config)
        if errors:
            return TestResult(False, "configuration is invalid", {"errors": errors})
        try:
            result = connector.test(config, bind_context(ctx, connector.name, config))
        except Exception as exc:
            # The message may quote a secret (a webhook URL, say): log it, answer the type only.
            ctx.logger.exception("connector %r test raised", connector.name)
            return TestResult(False, f"test failed unexpectedly ({type(exc).__name__})")
        if not isinstance(result, TestResult):
            return TestResult(False, f"test returned {type(result).__name__}, not a TestResult")
        problem = _test_result_problem(result)
        if problem is not None:
            ctx.logger.warning("connector %r test returned %s", connector.name, problem)
            return TestResult(False, f"test returned {problem}")
        return result


def _test_result_problem(result: TestResult) -> str | None:
    """What keeps ``result`` from being answered as JSON, or None."""
    if not isinstance(result.success, bool) or not isinstance(result.message, str):
        return "a TestResult whose success is not a bool or whose message is not a str"
    if not isinstance(result.data, dict):
        return f"data of type {type(result.data).__name__}, not a JSON object"
    found = jsoncodec.problem(result.data, "data")
    return None if found is None else f"data that is not JSON: {found}"


def _connector_problem(connector: Any) -> str | None:
    """Why ``connector`` breaks the contract, or None when it is fine."""
    if not isinstance(connector, Connector):
        return f"{connector!r} is not a Connector instance"
    name = connector.name
    if not isinstance(name, str) or not CONNECTOR_NAME.match(name):
        return f"name {name!r} must match {CONNECTOR_NAME.pattern}"
    if connector.type not in CONNECTOR_TYPES:
        return f"type {connector.type!r} must be one of {', '.join(CONNECTOR_TYPES)}"
    if not isinstance(connector.version, str) or not connector.version:
        return "version must be a non-empty string"
    schemas = {"config_schema": connector.config_schema}
    for action_name, action in dict(connector.actions).items():
        if not isinstance(action, Action) or not callable(action.handler):
            return f"action {action_name!r} must be an Action with a callable handler"
        schemas[f"actions[{action_name!r}].input_schema"] = action.input_schema
    for where, schema in schemas.items():
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            return f"{where} is not a valid JSON Schema: {exc.message}"
    for event_type, declared in dict(connector.event_types).items():
        if not str(event_type).startswith(f"{name}."):
            return f"event type {event_type!r} must start with {name + '.'!r}"
        problem = _event_type_problem(event_type, declared)
        if problem is not None:
            return problem
    return None


def _event_type_problem(event_type: Any, declared: Any) -> str | None:
    """Why an ``event_types`` entry is unusable (its schema and examples checked as the API
    checks a tenant's), or None."""
    if not isinstance(event_type, str):
        return f"event type {event_type!r} must be a string"
    if isinstance(declared, str):
        return None
    if not isinstance(declared, EventSpec) or not isinstance(declared.description, str):
        return f"event type {event_type!r} must map to a description or an EventSpec"
    errors = payload_schema_errors(declared.schema, list(declared.examples))
    if errors:
        where, messages = next(iter(errors.items()))
        return f"event type {event_type!r}: {where} {messages[0]}"
    return None
