"""OAuth2 connections: connect a provider account once, call its API with fresh tokens.

The config names the provider (a ``preset`` such as ``github`` fills its URLs) and the client
credentials; connecting happens through ``POST /api/v1/integrations/{id}/oauth/authorize``
and the callback, and the tokens live encrypted outside the config (see ``app.oauth``).
A ``rest`` integration with ``auth: {"type": "oauth2", "integration_id": …}`` calls the API
through the gateway; other connectors ask ``ctx.oauth_token(integration_id)``.
"""

from __future__ import annotations

from typing import Any

import requests

from app.connectors import (
    Connector,
    ConnectorContext,
    TestResult,
    TokenUnavailable,
    timeout_seconds,
)
from app.connectors.hookspecs import hookimpl
from app.oauth.presets import PRESETS, effective_config

__all__ = ["OAuth2Connector", "register_connectors"]

_URL: dict[str, Any] = {
    "type": "string",
    "format": "uri",
    "pattern": r"^https?://[^\s/?#@]+([/?#]\S*)?$",
}
# Parameters Switchboard sets itself: a config may not override them.
RESERVED_PARAMS = [
    "client_id",
    "redirect_uri",
    "response_type",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
]

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "OAuth2 connection",
    "properties": {
        "preset": {
            "enum": sorted(PRESETS),
            "description": "Fill URLs, scopes and options for a known provider: "
            + "; ".join(f"{name}: {preset['title']}" for name, preset in sorted(PRESETS.items())),
        },
        "tenant": {
            "type": "string",
            "pattern": r"^[A-Za-z0-9][A-Za-z0-9.-]{0,99}$",
            "description": "Replaces {tenant} in preset URLs (Microsoft Entra ID: directory id "
            "or domain; organizations or common for multi-tenant apps).",
        },
        "authorize_url": {**_URL, "description": "Authorization endpoint (preset: filled)."},
        "token_url": {**_URL, "description": "Token endpoint (preset: filled)."},
        "revoke_url": {**_URL, "description": "RFC 7009 revocation endpoint, if any."},
        "userinfo_url": {**_URL, "description": "Called by the connection test, if set."},
        "client_id": {"type": "string", "minLength": 1, "maxLength": 500},
        "client_secret": {"type": "string", "minLength": 1, "maxLength": 2000, "writeOnly": True},
        "scopes": {
            "type": "array",
            "items": {"type": "string", "pattern": r"^[!#-\[\]-~]{1,200}$"},
            "maxItems": 100,
            "description": "Scopes to ask for (preset: sensible defaults).",
        },
        "scope_separator": {"enum": [" ", ","], "description": "Slack wants commas."},
        "authorize_params": {
            "type": "object",
            "propertyNames": {
                "pattern": r"^[A-Za-z0-9_.-]{1,64}$",
                "not": {"enum": RESERVED_PARAMS},
            },
            "additionalProperties": {"type": "string", "maxLength": 500},
            "maxProperties": 20,
            "description": "Extra authorization request parameters (e.g. access_type=offline).",
        },
        "token_endpoint_auth_method": {
            "enum": ["client_secret_basic", "client_secret_post"],
            "description": "How the client authenticates to the token endpoint (default basic).",
        },
        "redirect_uri": {
            **_URL,
            "x-destination": False,  # the browser's way back to us, never called by the service
            "description": "Default: SWITCHBOARD_PUBLIC_URL + /api/v1/oauth/callback; register "
            "it at the provider.",
        },
        "timeout_ms": {"type": "integer", "minimum": 100, "maximum": 60000, "default": 10000},
    },
    "required": ["client_id", "client_secret"],
    "allOf": [
        {
            "if": {"not": {"required": ["preset"]}},
            "then": {"required": ["authorize_url", "token_url"]},
        }
    ],
    "additionalProperties": False,
}


class OAuth2Connector(Connector):
    """An account at an OAuth2 provider, connected once and refreshed as needed."""

    name = "oauth2"
    version = "1.0.0"
    title = "OAuth2 connection"
    type = "api"
    description = (
        "Connect an account at GitHub, Slack, Google, Microsoft Entra ID or any OAuth2 provider "
        "(PKCE, encrypted tokens, automatic refresh); use it from the gateway or other connectors."
    )
    config_schema = CONFIG_SCHEMA

    def test(self, config: dict[str, Any], ctx: ConnectorContext) -> TestResult:
        """Check that the connection has a usable token (and that ``userinfo_url`` accepts it)."""
        try:
            token = ctx.oauth_token()
        except TokenUnavailable as exc:
            return TestResult(False, exc.message)
        url = effective_config(config).get("userinfo_url")
        if not url:
            return TestResult(True, "connected: a valid access token is available")
        try:
            response = ctx.http.get(
                url,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                timeout=timeout_seconds(config),
                allow_redirects=False,
            )
            response.close()
        except requests.RequestException as exc:
            return TestResult(False, f"GET {url} failed ({type(exc).__name__})")
        data = {"status": response.status_code}
        if response.status_code != 200:
            return TestResult(False, f"GET {url} answered {response.status_code}", data)
        return TestResult(True, f"connected: GET {url} answered 200", data)


@hookimpl
def register_connectors() -> list[Connector]:
    """Return the OAuth2 connection connector."""
    return [OAuth2Connector()]
