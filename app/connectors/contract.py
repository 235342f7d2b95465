"""The connector contract: what a plugin subclasses and returns, and the value types it uses.

This module is Switchboard's public API for connector authors (see ``docs/plugins.md``); it
depends on ``requests``, ``jsonschema`` and leaf modules of the core (the SSRF guard's
``BlockedDestination``, the ``Retry-After`` parser, strict JSON) so it can be imported anywhere.
``ConnectorContext.request`` is the documented error policy of an outbound call, written once.
The schema helpers the core uses for every connector (``config_errors``, ``secret_paths``, …)
live in ``app.connectors.jsonschemas`` and are re-exported here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.structures import CaseInsensitiveDict

from app.connectors.jsonschemas import (
    ANY,
    config_errors,
    replace_secrets,
    secret_paths,
    url_paths,
    values_at,
)
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
    "EventSpec",
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
    "values_at",
]

#: The integration types a connector may declare.
CONNECTOR_TYPES = ("sso", "webhook", "api", "notification")
#: Timeout for outbound calls of connectors whose config has no ``timeout_ms``.
DEFAULT_TIMEOUT_SECONDS = 10.0
#: What a message about a destination the SSRF guard refused tells the admin to do.
OPEN_THE_NETWORK = "the operator can allow it with SWITCHBOARD_ALLOWED_NETWORKS"
#: requests' errors for a request that cannot be sent as written: sending it again cannot help.
_INVALID_REQUEST = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidJSONError,
)
#: Fields of a JSON error answer that say why, most telling first (Slack, OAuth, RFC 9457, …).
_REASON_FIELDS = ("message", "error_description", "detail", "error", "title")
_MAX_REASON = 200
#: A string the request carried (a URL path, a header value, …) at least this long is never
#: quoted back in a reason: it may be a secret.
_MIN_CARRIED = 8


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
    connector: str | None = None  # the connector served: names the service in ``request`` errors
    timeout: float = DEFAULT_TIMEOUT_SECONDS  # of ``request``: the config's ``timeout_ms``

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

    def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request through ``http``; return its JSON body (None when it has none).

        Failures raise ``ActionError`` without quoting the URL. Final: a destination the SSRF
        guard refuses, a request that cannot be sent as written, a redirect (not followed),
        any other 4xx (with the reason the service gave, unless it quotes what the request
        carried: the URL's path or query, a header value, a string of the body). Retryable:
        the service unreachable or not answering within ``timeout`` (default: ``self.timeout``),
        429 and 5xx, after ``Retry-After`` when the answer sets it. A retried request may reach
        the service twice: send its deduplication key when a duplicate would hurt.
        """
        service = self._service(url)
        seconds = self.timeout if timeout is None else timeout
        try:
            response = self.http.request(
                method,
                url,
                json=json,
                headers=headers,
                params=params,
                timeout=seconds,
                allow_redirects=False,
            )
        except BlockedDestination as exc:  # a ConnectionError: before RequestException
            raise ActionError(f"{exc}; {OPEN_THE_NETWORK}") from exc
        except _INVALID_REQUEST as exc:
            raise ActionError(
                f"the request to {service} is invalid ({type(exc).__name__})"
            ) from exc
        except requests.Timeout as exc:
            message = f"{service} did not answer within {seconds:g} s"
            raise ActionError(message, retryable=True) from exc
        except requests.RequestException as exc:
            message = f"{service} is unreachable ({type(exc).__name__})"
            raise ActionError(message, retryable=True) from exc
        return _json_answer(response, service, lambda: _carried(url, headers, json))

    def post_json(
        self,
        url: str,
        body: Any,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """POST ``body`` as JSON with ``request``'s error policy; return the JSON answer or None."""
        return self.request("POST", url, json=body, headers=headers, timeout=timeout)

    def _service(self, url: str) -> str:
        """Who ``url`` is, for messages: the connector's name, else the host (never the path)."""
        if self.connector:
            return self.connector
        try:
            return urlsplit(url).hostname or "the service"
        except ValueError:
            return "the service"


def bind_context(
    ctx: ConnectorContext, connector: str, config: Mapping[str, Any]
) -> ConnectorContext:
    """``ctx`` for one call of ``connector`` with ``config``: named, with the config's timeout."""
    return dataclasses.replace(ctx, connector=connector, timeout=timeout_seconds(config))


def _json_answer(
    response: requests.Response, service: str, carried: Callable[[], list[str]]
) -> Any:
    """The JSON body of a 2xx answer (None without one); any other answer raises ``ActionError``."""
    status = response.status_code
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise ActionError(
            f"{service} answered HTTP {status}", retryable=True, retry_after=retry_after
        )
    if 300 <= status < 400:
        raise ActionError(f"{service} answered HTTP {status} (redirects are not followed)")
    if status >= 400:
        reason = _refusal_reason(response, carried())
        raise ActionError(
            f"{service} error: {reason}" if reason else f"{service} answered HTTP {status}"
        )
    if not response.content or not _is_json(response):
        return None
    try:
        return jsoncodec.loads(response.content)
    except ValueError as exc:
        raise ActionError(f"{service} answered HTTP {status} with malformed JSON") from exc


def _is_json(response: requests.Response) -> bool:
    mime = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def _refusal_reason(response: requests.Response, carried: list[str]) -> str | None:
    """Why a 4xx answer says it refused, in one line: a JSON error field or a plain-text body.

    Markup (an HTML error page) is not a reason, and neither is one quoting a string of
    ``carried`` (a web server's "/hooks/<secret> not found", "invalid token <token>").
    """
    text: Any = None
    if _is_json(response):
        try:
            body = jsoncodec.loads(response.content)
        except ValueError:
            body = None
        if isinstance(body, dict):
            text = next(
                (body[key] for key in _REASON_FIELDS if isinstance(body.get(key), str)), None
            )
    else:
        text = response.content[: _MAX_REASON * 4].decode("utf-8", "replace")
        text = None if "<" in text else text
    if not text:
        return None
    line = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    if any(secret in line for secret in carried):
        return None
    return line[:_MAX_REASON] or None


def _carried(url: str, headers: Mapping[str, str] | None, body: Any) -> list[str]:
    """What a request carried that may be secret: the URL's path and query, each header value
    and word of one (a bearer token), each string of the JSON body; the short ones left out."""
    parts = urlsplit(url)
    found = [parts.path, parts.query]
    for value in (headers or {}).values():
        found += [value, *value.split()]
    found += _strings(body)
    return [text for text in found if len(text) >= _MIN_CARRIED]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list | tuple):
        return [text for item in value for text in _strings(item)]
    return []


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


@dataclass(frozen=True)
class EventSpec:
    """An event type's declaration: a one-line description and, optionally, a JSON Schema
    (2020-12) of its ``data`` and examples of it (see ``app.connectors.payloads``).

    ``Connector.event_types`` and ``register_event_types`` map a name to one of these, or to
    the description alone.
    """

    description: str
    schema: dict[str, Any] | None = None
    examples: tuple[dict[str, Any], ...] = ()


def event_spec(declared: str | EventSpec) -> EventSpec:
    """The :class:`EventSpec` of an ``event_types`` value (a bare description is one too)."""
    return declared if isinstance(declared, EventSpec) else EventSpec(declared)


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
    event_types: Mapping[str, str | EventSpec] = {}
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
            "event_types": {
                name: event_spec(declared).description
                for name, declared in self.event_types.items()
            },
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
