"""Generic REST API: weighted upstreams, credentials, a health check and a ``request`` action.

The same config drives the gateway (``/api/v1/gateway/{integration_id}/…``), which reuses
``build_auth_headers`` and the ``transform`` section; this module only performs one-off calls
(the ``request`` action, run as a job) and the connection test.
"""

from __future__ import annotations

import base64
import functools
import random
from collections.abc import Callable
from typing import Any

import requests

from app.connectors import (
    Action,
    ActionError,
    Connector,
    ConnectorContext,
    TestResult,
    TokenUnavailable,
    parse_retry_after,
    timeout_seconds,
)
from app.connectors.hookspecs import hookimpl
from app.gateway.transform import TRANSFORM_SCHEMA
from app.store import jsoncodec

__all__ = [
    "RestConnector",
    "build_auth_headers",
    "oauth_integration_id",
    "pick_upstream",
    "register_connectors",
]

#: Response bodies returned by the ``request`` action are cut to this many bytes.
MAX_BODY_BYTES = 64 * 1024
HTTP_METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
#: Methods safe to send twice (RFC 9110 §9.2.2); only these are retried after a failure.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

# (?![\s\S]) is the true end of the string: ``$`` would also match before a final newline.
_HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+(?![\s\S])"
_HEADER_VALUE: dict[str, Any] = {"type": "string", "pattern": r"^[^\r\n\x00]*(?![\s\S])"}
_HEADERS: dict[str, Any] = {
    "type": "object",
    "propertyNames": {"pattern": _HEADER_NAME},
    "additionalProperties": _HEADER_VALUE,
}
# http(s), a host, no user:password@ (credentials belong in ``auth``), no whitespace.
_URL = r"^https?://[^\s/?#@]+([/?#]\S*)?$"
_STATUS: dict[str, Any] = {"type": "integer", "minimum": 100, "maximum": 599}


def _auth(kind: str, fields: dict[str, Any], title: str) -> dict[str, Any]:
    return {
        "title": title,
        "type": "object",
        "properties": {"type": {"const": kind}, **fields},
        "required": ["type", *fields],
        "additionalProperties": False,
    }


_SECRET: dict[str, Any] = {"type": "string", "minLength": 1, "writeOnly": True}
# A secret sent as a header value (bearer token, API key) must be a valid header value.
_HEADER_SECRET: dict[str, Any] = {**_SECRET, "pattern": _HEADER_VALUE["pattern"]}

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "REST API",
    "properties": {
        "upstreams": {
            "type": "array",
            "description": "Base URLs; requests are spread over them by weight.",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "url": {"type": "string", "format": "uri", "pattern": _URL},
                    "weight": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1},
                },
                "required": ["url"],
                "additionalProperties": False,
            },
        },
        "auth": {
            "description": "How requests authenticate to the upstream.",
            "default": {"type": "none"},
            "oneOf": [
                _auth("none", {}, "type none"),
                _auth("bearer", {"token": _HEADER_SECRET}, "type bearer (token)"),
                _auth(
                    "basic",
                    {"username": {"type": "string", "minLength": 1}, "password": _SECRET},
                    "type basic (username, password)",
                ),
                _auth(
                    "api_key",
                    {
                        "header": {"type": "string", "pattern": _HEADER_NAME},
                        "value": _HEADER_SECRET,
                    },
                    "type api_key (header, value)",
                ),
                _auth(
                    "oauth2",
                    {"integration_id": {"type": "string", "pattern": r"^int_[A-Za-z0-9]{1,36}$"}},
                    "type oauth2 (integration_id of a connected oauth2 integration)",
                ),
            ],
        },
        "timeout_ms": {"type": "integer", "minimum": 100, "maximum": 120000, "default": 10000},
        "headers": {**_HEADERS, "description": "Default headers (not secrets: use auth)."},
        "health_check": {
            "type": "object",
            "properties": {
                "method": {"enum": ["GET", "HEAD", "OPTIONS", "POST"], "default": "GET"},
                "path": {"type": "string", "pattern": "^/", "default": "/"},
                "expected_status": {
                    "anyOf": [_STATUS, {"type": "array", "items": _STATUS, "minItems": 1}],
                    "default": 200,
                },
            },
            "additionalProperties": False,
        },
        "transform": {k: v for k, v in TRANSFORM_SCHEMA.items() if k != "$schema"},
        "log_bodies": {"type": "boolean", "default": False},
        "allow_cookies": {
            "type": "boolean",
            "default": False,
            "description": "Pass the upstream's Set-Cookie headers to gateway clients (they "
            "land on Switchboard's own origin, so only for an upstream you trust with it)",
        },
    },
    "required": ["upstreams"],
    "additionalProperties": False,
}

REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "method": {"enum": list(HTTP_METHODS)},
        "path": {"type": "string", "pattern": "^/", "default": "/"},
        "query": {
            "type": "object",
            "additionalProperties": {
                "type": ["string", "number", "boolean", "array"],
                "items": {"type": ["string", "number", "boolean"]},
            },
        },
        "headers": _HEADERS,
        "body": {"description": "Any JSON value, sent as the JSON request body."},
    },
    "required": ["method"],
    "additionalProperties": False,
}


#: ``token(integration_id)`` -> an OAuth2 access token (``ConnectorContext.oauth_token``).
TokenGetter = Callable[[str], str]


def oauth_integration_id(config: dict[str, Any]) -> str | None:
    """The OAuth2 connection whose token authenticates requests, if ``auth`` is ``oauth2``."""
    auth = config.get("auth") or {}
    return str(auth["integration_id"]) if auth.get("type") == "oauth2" else None


def build_auth_headers(config: dict[str, Any], token: TokenGetter | None = None) -> dict[str, str]:
    """Return the headers that authenticate a request with ``config["auth"]``.

    ``auth.type == "oauth2"`` needs ``token``, which returns the connection's access token
    (raising ``TokenUnavailable`` when there is none).
    """
    auth = config.get("auth") or {"type": "none"}
    kind = auth.get("type", "none")
    if kind == "oauth2":
        if token is None:
            raise TokenUnavailable("OAuth2 tokens are not available here")
        return {"Authorization": f"Bearer {token(str(auth['integration_id']))}"}
    if kind == "bearer":
        return {"Authorization": f"Bearer {auth['token']}"}
    if kind == "basic":
        pair = f"{auth['username']}:{auth['password']}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    if kind == "api_key":
        return {str(auth["header"]): str(auth["value"])}
    return {}


def pick_upstream(
    upstreams: list[dict[str, Any]], rng: random.Random | None = None
) -> dict[str, Any]:
    """Pick one upstream at random in proportion to its ``weight`` (default 1)."""
    weights = [int(upstream.get("weight", 1)) for upstream in upstreams]
    return (rng or random).choices(upstreams, weights=weights)[0]


def _url(upstream: dict[str, Any], path: str) -> str:
    return str(upstream["url"]).rstrip("/") + "/" + path.lstrip("/")


def _read_body(response: requests.Response) -> tuple[Any, bool]:
    """The response body (JSON if it is JSON, else text) cut to ``MAX_BODY_BYTES``."""
    raw = response.raw.read(MAX_BODY_BYTES + 1, decode_content=True) or b""
    truncated = len(raw) > MAX_BODY_BYTES
    raw = raw[:MAX_BODY_BYTES]
    if not truncated and "json" in response.headers.get("Content-Type", ""):
        try:
            return jsoncodec.loads(raw), False
        except ValueError:
            pass
    return raw.decode(response.encoding or "utf-8", "replace"), truncated


def _token(ctx: ConnectorContext, rejected: str | None, integration_id: str) -> str:
    return ctx.oauth_token(integration_id, rejected=rejected)


def send_request(
    config: dict[str, Any], action_input: dict[str, Any], ctx: ConnectorContext
) -> dict[str, Any]:
    """Send one request to a weighted upstream and return its status, headers and body."""
    method = action_input["method"]
    upstream = pick_upstream(config["upstreams"])
    url = _url(upstream, action_input.get("path", "/"))
    headers = {**config.get("headers", {}), **action_input.get("headers", {})}
    retryable = method in IDEMPOTENT_METHODS
    rejected: str | None = None
    while True:  # at most twice: once more with a refreshed token after an OAuth2 401
        credentials = build_auth_headers(config, functools.partial(_token, ctx, rejected))
        try:
            with ctx.http.request(
                method,
                url,
                params=action_input.get("query"),
                headers={**headers, **credentials},
                json=action_input.get("body"),
                timeout=timeout_seconds(config),
                allow_redirects=False,
                stream=True,
            ) as response:
                body, truncated = _read_body(response)
        except requests.RequestException as exc:
            raise ActionError(
                f"{method} {upstream['url']} failed ({type(exc).__name__})", retryable=retryable
            ) from exc
        if response.status_code != 401 or rejected or not oauth_integration_id(config):
            break
        rejected = credentials["Authorization"].removeprefix("Bearer ")
    if response.status_code == 429 or response.status_code >= 500:
        raise ActionError(
            f"{method} {upstream['url']} answered HTTP {response.status_code}",
            # A 429 means the request was not processed, so any method may try again.
            retryable=retryable or response.status_code == 429,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    return {
        "status": response.status_code,
        "headers": dict(response.headers),
        "body": body,
        "truncated": truncated,
        "upstream": upstream["url"],
    }


class RestConnector(Connector):
    """A generic HTTP/JSON API behind one or more upstreams."""

    name = "rest"
    version = "1.0.0"
    title = "REST API"
    type = "api"
    description = (
        "Call any HTTP API: weighted upstreams, bearer/basic/API-key/OAuth2 credentials, default "
        "headers, a health check, and the gateway's request transformation."
    )
    config_schema = CONFIG_SCHEMA
    actions = {
        "request": Action(REQUEST_SCHEMA, send_request, "Send one HTTP request to the API."),
    }

    def test(self, config: dict[str, Any], ctx: ConnectorContext) -> TestResult:
        """Run the health check against the first upstream."""
        check = config.get("health_check") or {}
        method = check.get("method", "GET")
        expected = check.get("expected_status", 200)
        expected = expected if isinstance(expected, list) else [expected]
        upstream = config["upstreams"][0]
        url = _url(upstream, check.get("path", "/"))
        try:
            headers = {**config.get("headers", {}), **build_auth_headers(config, ctx.oauth_token)}
        except TokenUnavailable as exc:
            return TestResult(False, f"no OAuth2 token: {exc.message}")
        try:
            response = ctx.http.request(
                method, url, headers=headers, timeout=timeout_seconds(config), allow_redirects=False
            )
            response.close()
        except requests.RequestException as exc:
            return TestResult(False, f"{method} {url} failed ({type(exc).__name__})")
        elapsed_ms = round(response.elapsed.total_seconds() * 1000)
        data = {"upstream": upstream["url"], "status": response.status_code, "ms": elapsed_ms}
        if response.status_code not in expected:
            expected_text = " or ".join(str(status) for status in expected)
            message = f"{method} {url} answered {response.status_code}, expected {expected_text}"
            return TestResult(False, message, data)
        return TestResult(True, f"{method} {url} answered {response.status_code}", data)


@hookimpl
def register_connectors() -> list[Connector]:
    """Return the REST API connector."""
    return [RestConnector()]
