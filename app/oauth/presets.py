"""Provider presets: data that fills an ``oauth2`` config's URLs and defaults, never code paths.

A preset's values apply where the config leaves a field out. ``{tenant}`` in a URL is replaced
by the config's ``tenant`` (Microsoft Entra ID: a directory id or domain; ``organizations`` or
``common`` for multi-tenant apps). Add a provider by adding an entry.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "github": {
        "title": "GitHub (OAuth app or GitHub App user tokens)",
        "authorize_url": "https://github.com/login/oauth/authorize",
        "token_url": "https://github.com/login/oauth/access_token",
        "userinfo_url": "https://api.github.com/user",
        "scopes": ["read:user"],
        "token_endpoint_auth_method": "client_secret_post",
    },
    "slack": {
        "title": "Slack (OAuth v2, bot token)",
        "authorize_url": "https://slack.com/oauth/v2/authorize",
        "token_url": "https://slack.com/api/oauth.v2.access",
        "revoke_url": "https://slack.com/api/auth.revoke",
        "scopes": ["chat:write"],
        "scope_separator": ",",
        "token_endpoint_auth_method": "client_secret_post",
    },
    "google": {
        "title": "Google",
        "authorize_url": "https://accounts.google.com/o/oauth2/v2/auth",
        "token_url": "https://oauth2.googleapis.com/token",
        "revoke_url": "https://oauth2.googleapis.com/revoke",
        "userinfo_url": "https://openidconnect.googleapis.com/v1/userinfo",
        "scopes": ["openid", "email"],
        # offline + consent: Google returns a refresh token only when asked this way
        "authorize_params": {"access_type": "offline", "prompt": "consent"},
        "token_endpoint_auth_method": "client_secret_post",
    },
    "microsoft": {
        "title": "Microsoft Entra ID (Microsoft identity platform v2.0)",
        "authorize_url": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
        "token_url": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        "userinfo_url": "https://graph.microsoft.com/oidc/userinfo",
        "scopes": ["offline_access", "User.Read"],
        "token_endpoint_auth_method": "client_secret_post",
        "tenant": "organizations",
    },
    "gitlab": {
        "title": "GitLab.com",
        "authorize_url": "https://gitlab.com/oauth/authorize",
        "token_url": "https://gitlab.com/oauth/token",
        "revoke_url": "https://gitlab.com/oauth/revoke",
        "userinfo_url": "https://gitlab.com/api/v4/user",
        "scopes": ["read_user"],
    },
}

#: Fields a preset may fill; anything else in a preset is documentation (``title``).
FILLED = (
    "authorize_url",
    "token_url",
    "revoke_url",
    "userinfo_url",
    "scopes",
    "scope_separator",
    "authorize_params",
    "token_endpoint_auth_method",
    "tenant",
)


def effective_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with its preset's values filled in where it has none, ``{tenant}`` applied."""
    preset = PRESETS.get(str(config.get("preset") or ""), {})
    merged = {**{k: preset[k] for k in FILLED if k in preset}, **config}
    tenant = str(merged.get("tenant") or "common")
    for field in ("authorize_url", "token_url", "revoke_url", "userinfo_url"):
        if isinstance(merged.get(field), str):
            merged[field] = merged[field].replace("{tenant}", tenant)
    merged.setdefault("scopes", [])
    merged.setdefault("scope_separator", " ")
    merged.setdefault("authorize_params", {})
    merged.setdefault("token_endpoint_auth_method", "client_secret_basic")
    return merged
