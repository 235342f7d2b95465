"""The connector contract: what a plugin subclasses and returns, and the value types it uses.

This module is Switchboard's public API for connector authors (see ``docs/plugins.md``); it
depends on ``requests``, ``jsonschema`` and two leaf modules of the core (the SSRF guard's
``BlockedDestination`` and the ``Retry-After`` parser) so it can be imported anywhere. It
also holds the schema helpers the core uses for every connector: ``config_errors`` (validation
with field paths) and ``secret_paths``/``replace_secrets`` (the ``writeOnly`` fields to
encrypt at rest and redact in answers).
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from jsonschema import Draft202012Validator, ValidationError
from requests.structures import CaseInsensitiveDict

from app.outbound.guard import BlockedDestination
from app.store import jsoncodec
from app.webhooks.backoff import parse_retry_after as _parse_retry_after

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
]

#: The integration types a connector may declare.
CONNECTOR_TYPES = ("sso", "webhook", "api", "notification")
#: Timeout for outbound calls of connectors whose config has no ``timeout_ms``.
DEFAULT_TIMEOUT_SECONDS = 10.0
#: Path element of ``secret_paths`` standing for every array item or every map value.
ANY = "*"


class ActionError(Exception):
    """An action failed; ``retryable`` asks the job runner to try again after ``retry_after`` s."""

    def __init__(
        self, message: str, *, retryable: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


class TokenUnavailable(ActionError):
    """No usable access token: not connected, refresh refused (reconnect), or provider down.

    ``retryable`` is True only for transient failures (the provider or the network is down).
    """


#: ``tokens(integration_id, rejected)`` -> a valid access token; see ``ConnectorContext``.
TokenSource = Callable[[str, "str | None"], str]


@dataclass
class ConnectorContext:
    """What Switchboard hands a connector for one call: HTTP session, integration, logger."""

    http: requests.Session
    integration_id: str | None = None
    logger: logging.Logger = field(
        default_factory=lambda: logging.getLogger("switchboard.connectors")
    )
    tokens: TokenSource | None = None  # set by Switchboard; use ``oauth_token``

    def oauth_token(self, integration_id: str | None = None, *, rejected: str | None = None) -> str:
        """A valid access token of the OAuth2 connection ``integration_id`` (default: this one).

        The token is refreshed first when it expires within a minute. Pass the token the API
        just answered 401 to as ``rejected`` to force one refresh (concurrent callers share it).
        Raises ``TokenUnavailable``; never log or return the token.
        """
        target = integration_id or self.integration_id
        if self.tokens is None or target is None:
            raise TokenUnavailable("no OAuth2 connection is available to this call")
        return self.tokens(target, rejected)


@dataclass
class TestResult:
    """Outcome of ``Connector.test``: shown to the admin who pressed "Test"."""

    __test__ = False  # not a pytest test class, whatever module imports it

    success: bool
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form of this result."""
        return {"success": self.success, "message": self.message, "data": dict(self.data)}


class InboundRejected(Exception):
    """An inbound request is refused (bad signature, stale timestamp, malformed body)."""

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


ActionHandler = Callable[[dict[str, Any], dict[str, Any], ConnectorContext], dict[str, Any]]


@dataclass(frozen=True)
class Action:
    """An operation a connector offers: input schema, handler(config, input, ctx) -> result."""

    input_schema: dict[str, Any]
    handler: ActionHandler
    description: str = ""


@dataclass
class InboundRequest:
    """A request received on ``/api/v1/inbound/{integration_id}``, exactly as it arrived."""

    method: str
    headers: Mapping[str, str]
    body: bytes
    query: Mapping[str, str] = field(default_factory=dict)
    remote_addr: str | None = None

    def __post_init__(self) -> None:
        self.headers = CaseInsensitiveDict(self.headers)

    def json(self) -> Any:
        """Return the body parsed as JSON, or raise ``InboundRejected`` (status 400)."""
        try:
            return jsoncodec.loads(self.body)
        except ValueError as exc:
            raise InboundRejected("request body is not valid JSON", status=400) from exc


@dataclass
class Event:
    """An event to publish: ``type`` must be one of the connector's declared event types."""

    type: str
    data: dict[str, Any]


@dataclass
class InboundResult:
    """What an accepted inbound request produced; ``response`` is the JSON body to answer.

    ``replay_key`` (e.g. the signed body) arriving again under another delivery id within
    ``replay_window`` seconds is refused (409): for providers whose signature does not cover
    the delivery id, so a captured request cannot be replayed with a fresh one.
    """

    delivery_id: str | None
    events: list[Event] = field(default_factory=list)
    response: dict[str, Any] | None = None
    replay_key: bytes | None = None
    replay_window: int = 0


class Connector:
    """Base class of every connector: subclass it, set the attributes, override the methods."""

    name: str = ""
    version: str = "0.0.0"
    title: str = ""
    type: str = "api"
    description: str = ""
    config_schema: dict[str, Any] = {"type": "object"}
    event_types: dict[str, str] = {}
    actions: dict[str, Action] = {}

    def test(self, config: dict[str, Any], ctx: ConnectorContext) -> TestResult:
        """Check that ``config`` works (credentials, reachability); report, never raise."""
        return TestResult(True, "configuration is valid (this connector has no live test)")

    def handle_inbound(
        self, request: InboundRequest, config: dict[str, Any], ctx: ConnectorContext
    ) -> InboundResult:
        """Verify an inbound request and map it to events; raise ``InboundRejected`` if bad."""
        raise InboundRejected("connector does not accept inbound requests", status=404)

    @property
    def accepts_inbound(self) -> bool:
        """Whether this connector overrides ``handle_inbound``."""
        return type(self).handle_inbound is not Connector.handle_inbound

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready description listed by ``GET /api/v1/connectors``."""
        return {
            "name": self.name,
            "version": self.version,
            "title": self.title or self.name,
            "type": self.type,
            "description": self.description,
            "config_schema": self.config_schema,
            "event_types": dict(self.event_types),
            "actions": {
                name: {"description": action.description, "input_schema": action.input_schema}
                for name, action in self.actions.items()
            },
            "inbound": self.accepts_inbound,
        }


def timeout_seconds(config: Mapping[str, Any], default: float = DEFAULT_TIMEOUT_SECONDS) -> float:
    """Return the outbound timeout in seconds: ``config["timeout_ms"]`` if set, else ``default``."""
    timeout_ms = config.get("timeout_ms")
    return timeout_ms / 1000.0 if isinstance(timeout_ms, int | float) else default


def parse_retry_after(value: str | None) -> float | None:
    """Return the delay a ``Retry-After`` header asks for (seconds or HTTP date), or None.

    The delay is clamped to 1 s – 1 h, so a peer can neither cause a hot loop nor park a job.
    """
    return _parse_retry_after(value)


# --- configuration validation -------------------------------------------------------------


def config_errors(schema: Mapping[str, Any], config: Any) -> dict[str, list[str]]:
    """Validate ``config`` against a JSON Schema (2020-12); map field paths to messages.

    Keys are dotted paths (``upstreams.0.url``) or ``_schema`` for the root. Messages never
    quote the submitted value, so secrets cannot leak into error answers. An empty dict means
    the config is valid. ``format`` is an annotation only; use ``pattern`` to enforce shapes.
    """
    errors: dict[str, list[str]] = {}
    for error in Draft202012Validator(dict(schema)).iter_errors(config):
        _collect(error, errors)
    return errors


def _add(out: dict[str, list[str]], path: Iterable[str | int], message: str) -> None:
    key = ".".join(str(part) for part in path) or "_schema"
    messages = out.setdefault(key, [])
    if message not in messages:
        messages.append(message)


def _collect(error: ValidationError, out: dict[str, list[str]]) -> None:
    path = list(error.absolute_path)
    instance, value = error.instance, error.validator_value
    if error.validator in ("oneOf", "anyOf"):
        closest = _closest_branch(error)
        if closest is None:
            _add(out, path, _branches_message(error))
        for sub in closest or ():
            _collect(sub, out)
    elif error.validator == "required" and isinstance(instance, dict):
        for name in value:
            if name not in instance:
                _add(out, [*path, name], "is required")
    elif error.validator == "dependentRequired" and isinstance(instance, dict):
        for name, needed in value.items():
            for other in needed if name in instance else ():
                if other not in instance:
                    _add(out, [*path, other], f"is required when {name} is set")
    elif error.validator == "additionalProperties" and isinstance(instance, dict):
        known = set(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        for key in instance:
            if key not in known and not any(re.search(p, key) for p in patterns):
                _add(out, [*path, key], "is not an allowed field")
    else:
        _add(out, path, _message(error))


def _closest_branch(error: ValidationError) -> list[ValidationError] | None:
    """The errors of the only oneOf/anyOf branch whose discriminators match, if exactly one."""
    branches: dict[int, list[ValidationError]] = {}
    for sub in error.context or ():
        branches.setdefault(int(sub.relative_schema_path[0]), []).append(sub)
    candidates = [
        errs
        for errs in branches.values()
        if not any(
            e.validator in ("const", "enum", "not")
            or (e.validator == "type" and not e.relative_path)
            for e in errs
        )
    ]
    return candidates[0] if len(candidates) == 1 else None


def _branch_label(index: int, schema: Any) -> str:
    if isinstance(schema, dict):
        if schema.get("title"):
            return str(schema["title"])
        discriminator = schema.get("properties", {}).get("type", {})
        if isinstance(discriminator, dict) and "const" in discriminator:
            return f"type {discriminator['const']}"
        if "type" in schema:
            return _format(schema["type"])
    return f"option {index + 1}"


def _branches_message(error: ValidationError) -> str:
    labels = "; ".join(_branch_label(i, s) for i, s in enumerate(error.validator_value))
    if error.validator == "anyOf":
        return f"must match at least one of: {labels}"
    if not error.context:  # oneOf failed because several branches matched
        return f"must match exactly one of: {labels} (it matches more than one)"
    return f"must match exactly one of: {labels}"


def _format(value: Any) -> str:
    if isinstance(value, list):
        return " or ".join(_format(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


_FORMAT_NAMES = {"uri": "URL", "email": "email address"}
_MESSAGES = {
    "type": "must be of type {v}",
    "enum": "must be one of: {items}",
    "const": "must be {v}",
    "minLength": "must be at least {v} character{s} long",
    "maxLength": "must be at most {v} character{s} long",
    "minItems": "must contain at least {v} item{s}",
    "maxItems": "must contain at most {v} item{s}",
    "minProperties": "must have at least {v} field{s}",
    "maxProperties": "must have at most {v} field{s}",
    "minimum": "must be at least {v}",
    "maximum": "must be at most {v}",
    "exclusiveMinimum": "must be greater than {v}",
    "exclusiveMaximum": "must be less than {v}",
    "multipleOf": "must be a multiple of {v}",
    "pattern": "must match the pattern {v}",
    "format": "must be a valid {v}",
    "uniqueItems": "must not contain duplicate items",
    "not": "is not allowed here",
}


def _message(error: ValidationError) -> str:
    """A human-readable message built from the schema alone (never from the value)."""
    kind, value = error.validator, error.validator_value
    if kind == "minLength" and value == 1:
        return "must not be empty"
    if kind == "pattern" and isinstance(error.schema, dict) and "format" in error.schema:
        kind, value = "format", error.schema["format"]  # "must be a valid URL" reads better
    if kind == "format":
        value = _FORMAT_NAMES.get(value, value)
    if kind in _MESSAGES:
        items = ", ".join(_format(v) for v in value) if kind == "enum" else ""
        return _MESSAGES[kind].format(v=_format(value), items=items, s="" if value == 1 else "s")
    if kind is None or value is False:  # a `false` schema
        return "is not allowed"
    return f"is invalid ({kind})"


# --- secrets (writeOnly fields) -----------------------------------------------------------


def secret_paths(schema: Mapping[str, Any]) -> list[tuple[str | int, ...]]:
    """Return where ``writeOnly`` fields sit in configs of ``schema``.

    Each path is a tuple of object keys and array indexes; ``ANY`` (``"*"``) stands for every
    item of an array (``items``) or every value of a map (``additionalProperties``). Branches of
    ``oneOf``/``anyOf``/``allOf``/``if``-``then``-``else`` and local ``$ref``s are followed.
    """
    return _marked_paths(schema, lambda node: node.get("writeOnly") is True)


def url_paths(schema: Mapping[str, Any]) -> list[tuple[str | int, ...]]:
    """Return where ``"format": "uri"`` fields sit: destinations checked by the SSRF guard on save.

    Paths are those of ``secret_paths``; a secret URL (Slack's ``webhook_url``) is one too. A
    URL the service never calls (a browser redirect back to us) opts out with
    ``"x-destination": false``.
    """
    return _marked_paths(
        schema, lambda node: node.get("format") == "uri" and node.get("x-destination") is not False
    )


Path = tuple[str | int, ...]


def _marked_paths(schema: Mapping[str, Any], mark: Callable[[dict[str, Any]], bool]) -> list[Path]:
    found: list[Path] = []
    _walk_marked(dict(schema), (), dict(schema), found, frozenset(), mark)
    return found


def _walk_marked(
    schema: Any,
    path: Path,
    root: dict[str, Any],
    found: list[Path],
    refs: frozenset[str],
    mark: Callable[[dict[str, Any]], bool],
) -> None:
    if not isinstance(schema, dict):
        return
    if mark(schema):
        if path not in found:
            found.append(path)
        return
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#") and ref not in refs:
        target: Any = root
        for part in ref.lstrip("#").split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, dict) else None
        _walk_marked(target, path, root, found, refs | {ref}, mark)
    for key, sub in (schema.get("properties") or {}).items():
        _walk_marked(sub, (*path, key), root, found, refs, mark)
    for sub in (schema.get("patternProperties") or {}).values():
        _walk_marked(sub, (*path, ANY), root, found, refs, mark)
    _walk_marked(schema.get("additionalProperties"), (*path, ANY), root, found, refs, mark)
    _walk_marked(schema.get("items"), (*path, ANY), root, found, refs, mark)
    for index, sub in enumerate(schema.get("prefixItems") or ()):
        _walk_marked(sub, (*path, index), root, found, refs, mark)
    for keyword in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(keyword) or ():
            _walk_marked(sub, path, root, found, refs, mark)
    for keyword in ("then", "else"):
        _walk_marked(schema.get(keyword), path, root, found, refs, mark)
    for sub in (schema.get("dependentSchemas") or {}).values():
        _walk_marked(sub, path, root, found, refs, mark)


def replace_secrets(schema: Mapping[str, Any], config: Any, replace: Callable[[Any], Any]) -> Any:
    """Return a deep copy of ``config`` with every non-null secret value ``v`` as ``replace(v)``.

    Use it to encrypt before storing, decrypt after loading, or redact (``lambda _: "****"``).
    """
    result = copy.deepcopy(config)
    for path in secret_paths(schema):
        if not path:
            return replace(result) if result is not None else None
        _replace_at(result, path, replace)
    return result


def values_at(config: Any, path: Path, prefix: str = "") -> list[tuple[str, Any]]:
    """The non-null values at ``path`` in ``config`` (``ANY`` expanded), with dotted paths."""
    if not path:
        return [] if config is None else [(prefix.rstrip("."), config)]
    head, rest = path[0], path[1:]
    if isinstance(config, dict):
        keys: list[Any] = list(config) if head == ANY else [head] if head in config else []
    elif isinstance(config, list):
        indexes = range(len(config))
        keys = list(indexes) if head == ANY else [head] if head in indexes else []
    else:
        return []
    return [found for key in keys for found in values_at(config[key], rest, f"{prefix}{key}.")]


def _replace_at(node: Any, path: tuple[str | int, ...], replace: Callable[[Any], Any]) -> None:
    head, rest = path[0], path[1:]
    keys: Iterable[Any]
    if isinstance(node, dict):
        keys = list(node) if head == ANY else [head] if head in node else []
    elif isinstance(node, list):
        if head == ANY:
            keys = range(len(node))
        else:
            keys = [head] if isinstance(head, int) and 0 <= head < len(node) else []
    else:
        return
    for key in keys:
        if rest:
            _replace_at(node[key], rest, replace)
        elif node[key] is not None:
            node[key] = replace(node[key])
