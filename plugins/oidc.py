"""OpenID Connect SSO: Switchboard's own users sign in with their organisation's identity provider.

An ``sso`` integration belongs to one tenant and names the issuer (discovered through
``/.well-known/openid-configuration``), the client, the email domains it claims (no other
tenant can claim them; ``/api/v1/auth/sso/discover?email=`` finds the integration by them), how
claims map to roles in its tenant, and whether unknown users are created. Users sign in at
``GET /api/v1/auth/sso/{integration_id}/login``; see ``app.oauth.sso`` for the checks made.
Microsoft Entra ID is one issuer: ``https://login.microsoftonline.com/{tenant-id}/v2.0`` with
``tenant_id`` set, so the ID token's ``tid`` claim is checked too.
"""

from __future__ import annotations

from typing import Any

from app.connectors import Connector, ConnectorContext, TestResult, timeout_seconds
from app.connectors.hookspecs import hookimpl
from app.oauth.discovery import provider_metadata, signing_keys
from app.outbound.oauth import ProviderError

__all__ = ["OidcConnector", "register_connectors"]

_URL: dict[str, Any] = {
    "type": "string",
    "format": "uri",
    "pattern": r"^https?://[^\s/?#@]+([/?#]\S*)?$",
}
ROLES = ["admin", "member", "readonly"]
_DOMAIN = r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "OpenID Connect SSO",
    "properties": {
        "issuer": {
            **_URL,
            "description": "Exactly the issuer in the provider's discovery document, e.g. "
            "https://login.microsoftonline.com/<tenant-id>/v2.0",
        },
        "client_id": {"type": "string", "minLength": 1, "maxLength": 500},
        "client_secret": {"type": "string", "minLength": 1, "maxLength": 2000, "writeOnly": True},
        "scopes": {
            "type": "array",
            "items": {"type": "string", "pattern": r"^[!#-\[\]-~]{1,200}$"},
            "contains": {"const": "openid"},
            "maxItems": 50,
            "default": ["openid", "email", "profile"],
        },
        "allowed_domains": {
            "type": "array",
            "items": {"type": "string", "pattern": _DOMAIN},
            "minItems": 1,
            "maxItems": 100,
            "description": "Email domains allowed to sign in (lower case).",
        },
        "email_claim": {"type": "string", "minLength": 1, "maxLength": 100, "default": "email"},
        "tenant_id": {
            "type": "string",
            "pattern": r"^[0-9a-fA-F-]{36}$",
            "description": "Microsoft Entra ID: the ID token's tid claim must equal it.",
        },
        "auto_provision": {
            "type": "boolean",
            "default": False,
            "description": "Create users who have no Switchboard account yet (members of this "
            "integration's tenant).",
        },
        "link_existing_by_email": {
            "type": "boolean",
            "default": False,
            "description": "Sign in an existing account with the same email the first time, "
            "when the provider asserts email_verified: true. Never an account with a password or "
            "an admin role: those must be linked explicitly.",
        },
        "default_role": {"enum": ROLES, "default": "member"},
        "role_mapping": {
            "type": "array",
            "maxItems": 100,
            "description": "A claim value → role; the highest matching role wins, none matching "
            "gives default_role. With a mapping, every login sets the role in this tenant of "
            "users this integration provisioned or linked (no other user's).",
            "items": {
                "type": "object",
                "properties": {
                    "claim": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 100,
                        "default": "groups",
                    },
                    "value": {"type": "string", "minLength": 1, "maxLength": 500},
                    "role": {"enum": ROLES},
                },
                "required": ["value", "role"],
                "additionalProperties": False,
            },
        },
        "token_endpoint_auth_method": {"enum": ["client_secret_basic", "client_secret_post"]},
        "redirect_uri": {
            **_URL,
            "x-destination": False,  # the browser's way back to us, never called by the service
            "description": "Default: SWITCHBOARD_PUBLIC_URL + /api/v1/auth/sso/callback.",
        },
        "timeout_ms": {"type": "integer", "minimum": 100, "maximum": 60000, "default": 10000},
    },
    "required": ["issuer", "client_id", "client_secret", "allowed_domains"],
    "additionalProperties": False,
}


class OidcConnector(Connector):
    """Single sign-on with an OpenID Connect identity provider."""

    name = "oidc"
    version = "1.0.0"
    title = "OpenID Connect SSO"
    type = "sso"
    description = (
        "Let people sign in to Switchboard with Microsoft Entra ID, Google Workspace, Okta or any "
        "OpenID Connect provider (PKCE, nonce, verified ID tokens, role mapping)."
    )
    config_schema = CONFIG_SCHEMA

    def test(self, config: dict[str, Any], ctx: ConnectorContext) -> TestResult:
        """Fetch the discovery document and the signing keys."""
        timeout = timeout_seconds(config)
        try:
            metadata = provider_metadata(config["issuer"], timeout)
            keys = signing_keys(metadata["jwks_uri"], timeout, refresh=True)
        except ProviderError as exc:
            return TestResult(False, exc.message)
        return TestResult(
            True,
            f"discovered {config['issuer']}: {len(keys.keys)} signing key(s)",
            {"authorization_endpoint": metadata["authorization_endpoint"]},
        )


@hookimpl
def register_connectors() -> list[Connector]:
    """Return the OpenID Connect SSO connector."""
    return [OidcConnector()]
