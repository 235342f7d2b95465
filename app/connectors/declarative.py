"""The short form of a connector: attributes and ``@action`` methods over ``Connector``.

A ``DeclarativeConnector`` is a ``Connector`` whose boilerplate is derived: ``config_fields``
become ``config_schema``; ``@action`` methods become ``actions`` (their input fields the input
schema, their docstring the description); the class docstring is the ``description``; the
version is that of the installed distribution; and ``test`` checks, through the SSRF guard,
that every URL of the config answers. Actions, ``test`` and ``handle_inbound`` see the config
and the input with their schema defaults filled in, and a context that names the connector and
carries the config's timeout, so ``ctx.request`` applies the error policy. ``provides`` writes
a plugin's ``register_connectors`` hook. The full form (``Connector``, ``Action``) is unchanged.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import requests

from app.connectors.contract import (
    OPEN_THE_NETWORK,
    Action,
    ActionHandler,
    BlockedDestination,
    Connector,
    ConnectorContext,
    InboundRequest,
    InboundResult,
    TestResult,
    bind_context,
)
from app.connectors.hookspecs import hookimpl
from app.connectors.jsonschemas import object_schema, url_paths, values_at, with_defaults
from app.connectors.registry import ENTRY_POINT_GROUP

__all__ = ["DeclarativeConnector", "action", "distribution_version", "provides"]

Method = TypeVar("Method", bound=Callable[..., Any])
#: The attribute ``@action`` sets on a method: the action's input schema.
_INPUT_SCHEMA = "__switchboard_input_schema__"
#: The version of a connector whose module no installed distribution's entry point loads.
UNKNOWN_VERSION = "0.0.0"

TestMethod = Callable[[Any, dict[str, Any], ConnectorContext], TestResult]
InboundMethod = Callable[[Any, InboundRequest, dict[str, Any], ConnectorContext], InboundResult]


def action(
    *,
    input: Mapping[str, Mapping[str, Any]] | None = None,
    input_schema: Mapping[str, Any] | None = None,
) -> Callable[[Method], Method]:
    """Make a method ``(self, config, input, ctx) -> dict`` of a ``DeclarativeConnector`` an action.

    The action is named after the method and described by its docstring's first paragraph. Its
    input has the fields ``input`` (as ``config_fields``; none when omitted), or is described
    by a whole JSON Schema given as ``input_schema``.
    """
    if input is not None and input_schema is not None:
        raise TypeError("give an action input (fields) or input_schema (a JSON Schema), not both")
    schema = dict(input_schema) if input_schema is not None else object_schema(input or {})

    def mark(method: Method) -> Method:
        setattr(method, _INPUT_SCHEMA, schema)
        return method

    return mark


def _test_with_defaults(test: TestMethod) -> TestMethod:
    @functools.wraps(test)
    def run(self: Any, config: dict[str, Any], ctx: ConnectorContext) -> TestResult:
        config = with_defaults(self.config_schema, config)
        return test(self, config, bind_context(ctx, self.name, config))

    return run


def _inbound_with_defaults(handle: InboundMethod) -> InboundMethod:
    @functools.wraps(handle)
    def run(
        self: Any, request: InboundRequest, config: dict[str, Any], ctx: ConnectorContext
    ) -> InboundResult:
        config = with_defaults(self.config_schema, config)
        return handle(self, request, config, bind_context(ctx, self.name, config))

    return run


_CONFIG_DEFAULTS: dict[str, Callable[[Any], Any]] = {
    "test": _test_with_defaults,
    "handle_inbound": _inbound_with_defaults,
}


class DeclarativeConnector(Connector):
    """A connector declared by attributes and ``@action`` methods (the short form).

    Set ``name`` and ``type``, ``config_fields`` (field -> JSON Schema; see ``object_schema``)
    or a whole ``config_schema``, and ``title`` and ``event_types`` as on ``Connector``.
    ``version`` defaults to the version of the installed distribution whose entry point loads
    the module, ``description`` to the first paragraph of the docstring. An ``actions`` dict of
    the full form is still taken (its handlers get defaults and context too).
    """

    version = ""
    config_fields: dict[str, Any] = {}
    config_schema = object_schema({})
    #: The ``@action`` methods of the class and its bases, by name.
    _action_methods: dict[str, Callable[..., Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "config_fields" in own:
            if "config_schema" in own:
                raise TypeError(f"{cls.__name__}: set config_fields or config_schema, not both")
            cls.config_schema = object_schema(cls.config_fields)
        if "description" not in own and cls.__doc__:
            cls.description = _first_paragraph(cls.__doc__)
        if "actions" in own:
            cls.actions = {
                name: _with_defaults(cls, a.input_schema, a.handler, a.description)
                for name, a in own["actions"].items()
            }
        for name, wrap in _CONFIG_DEFAULTS.items():  # the methods that take a config
            if name in own:
                setattr(cls, name, wrap(own[name]))
        cls._action_methods = _collect_action_methods(cls)

    def __init__(self) -> None:
        cls = type(self)
        if not self.version:
            self.version = distribution_version(cls.__module__)
        self.actions = {
            **cls.actions,
            **{
                name: _with_defaults(
                    cls,
                    getattr(method, _INPUT_SCHEMA),
                    getattr(self, name),
                    _first_paragraph(method.__doc__ or ""),
                )
                for name, method in cls._action_methods.items()
            },
        }

    @_test_with_defaults
    def test(self, config: dict[str, Any], ctx: ConnectorContext) -> TestResult:
        """Check that every URL field of the config answers a HEAD request (through the guard).

        Any HTTP answer counts as reachable; the status of each is in ``data["answered"]``.
        Messages name fields, never their values (a webhook URL is a secret).
        """
        targets = [
            found for path in url_paths(self.config_schema) for found in values_at(config, path)
        ]
        if not targets:
            return TestResult(True, "configuration is valid (it has no URL to check)")
        answered: dict[str, int] = {}
        for where, target in targets:
            try:
                response = ctx.http.head(str(target), timeout=ctx.timeout, allow_redirects=False)
            except BlockedDestination as exc:  # a ConnectionError: before RequestException
                return TestResult(False, f"{where}: {exc}; {OPEN_THE_NETWORK}")
            except requests.RequestException as exc:
                return TestResult(False, f"{where} is unreachable ({type(exc).__name__})")
            response.close()
            answered[where] = response.status_code
        return TestResult(True, f"reachable: {', '.join(answered)}", {"answered": answered})


def _collect_action_methods(cls: type) -> dict[str, Callable[..., Any]]:
    """The ``@action`` methods of ``cls`` and its bases (a plain override drops one)."""
    methods: dict[str, Callable[..., Any]] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if hasattr(value, _INPUT_SCHEMA):
                if hasattr(Connector, name):
                    raise TypeError(f"{cls.__name__}: action {name!r} would hide Connector.{name}")
                methods[name] = value
            else:
                methods.pop(name, None)
    return methods


def _with_defaults(
    cls: type[Connector],
    input_schema: Mapping[str, Any],
    handler: ActionHandler,
    description: str,
) -> Action:
    """An action of ``cls`` whose ``handler`` sees defaults filled in and a bound context."""

    @functools.wraps(handler)
    def run(
        config: dict[str, Any], action_input: dict[str, Any], ctx: ConnectorContext
    ) -> dict[str, Any]:
        config = with_defaults(cls.config_schema, config)
        action_input = with_defaults(input_schema, action_input)
        return handler(config, action_input, bind_context(ctx, cls.name, config))

    return Action(dict(input_schema), run, description)


def _first_paragraph(doc: str) -> str:
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def distribution_version(module: str) -> str:
    """The version of the installed distribution whose plugin entry point loads ``module``.

    Entry points are matched by top-level package, so ``switchboard_acme.connectors`` finds
    the distribution declaring ``acme = "switchboard_acme"``; ``UNKNOWN_VERSION`` when none does
    (a module loaded from a path, as in a plugin's own tests before it is installed).
    """
    package = module.partition(".")[0]
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.module.partition(".")[0] == package and entry_point.dist is not None:
            return entry_point.dist.version
    return UNKNOWN_VERSION


def provides(*connectors: type[Connector]) -> Callable[[], list[Connector]]:
    """The ``register_connectors`` hook of a plugin providing ``connectors`` (classes).

    Write ``register_connectors = provides(Teams, PagerDuty)`` at module level; each class is
    instantiated when the plugin is loaded.
    """

    @hookimpl
    def register_connectors() -> list[Connector]:
        """Return one instance of each connector class."""
        return [connector() for connector in connectors]

    return register_connectors
