"""Connecting an ``oauth2`` integration: authorize URL (PKCE S256, single-use state) → callback
(code exchange, tokens stored encrypted, ``oauth.connected``) → revoke.

The state remembers the integration, the PKCE verifier, the redirect URI, the allowed
``return_to`` and the API key and user that asked, so the callback (which carries no API key)
is authenticated by the state and audited as that caller. The flow is bound to one browser, as
SSO login is (``binding``): ``authorization_url`` is Switchboard's own single-use start link,
which sets the binding cookie and redirects to the provider, and the callback refuses a browser
without that cookie — a leaked provider URL connects nobody else's account.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Response, current_app

from app.audit import record_audit
from app.auth.access import Principal, current_tenant_id
from app.connectors.configs import decrypt_config
from app.connectors.contract import timeout_seconds
from app.events.catalog import emit_event
from app.oauth import binding, states, tokens
from app.oauth.pages import checked_return_to, redirect_to, result_page
from app.oauth.pkce import new_code_verifier
from app.oauth.presets import effective_config
from app.outbound.oauth import ProviderError, describe, oauth_session
from app.store.db import database
from app.store.models import Integration, IntegrationLog, utcnow
from app.web.problems import Problem

FLOW = "connect"
CALLBACK_PATH = "/api/v1/oauth/callback"


def oauth_integration(integration_id: str) -> Integration:
    """The tenant's ``oauth2`` integration, or a 404/409 problem."""
    row = Integration.get_of(current_tenant_id(), Integration.id == integration_id)
    if row is None:
        raise Problem(404, f"No integration {integration_id!r}.")
    if row.provider != tokens.OAUTH_PROVIDER:
        raise Problem(
            409, f"Integration {integration_id!r} is not an OAuth2 connection (provider oauth2)."
        )
    return row


def _settings(row: Integration) -> dict[str, Any]:
    config = effective_config(decrypt_config(row.config))
    config["redirect_uri"] = config.get("redirect_uri") or (
        current_app.config["PUBLIC_URL"] + CALLBACK_PATH
    )
    return config


def _session(config: dict[str, Any]) -> Any:
    scopes = config["scopes"]
    return oauth_session(
        client_id=config["client_id"],
        client_secret=config.get("client_secret"),
        timeout=timeout_seconds(config),
        auth_method=config["token_endpoint_auth_method"],
        redirect_uri=config["redirect_uri"],
        scope=config["scope_separator"].join(scopes) if scopes else None,
    )


def start(row: Integration, principal: Principal, return_to: str | None) -> dict[str, Any]:
    """Build the provider's authorization URL for ``row`` and remember its state."""
    config = _settings(row)
    return_to = checked_return_to(return_to)
    verifier = new_code_verifier()
    cookie, cookie_digest = binding.new_binding()
    state, expires_at = states.issue(
        FLOW,
        {
            "integration_id": row.id,
            "tenant_id": row.tenant_id,
            "code_verifier": verifier,
            "redirect_uri": config["redirect_uri"],
            "return_to": return_to,
            "key_id": principal.key.id,
            "user_id": principal.user.id if principal.user else None,
            "binding": cookie_digest,
        },
    )
    with _session(config) as session:
        url, _ = session.create_authorization_url(
            config["authorize_url"],
            state=state,
            code_verifier=verifier,
            **config["authorize_params"],
        )
    start_url = binding.start_link(url, cookie, CALLBACK_PATH)
    record_audit("oauth.authorize_started", "integration", row.id, {"return_to": return_to})
    return {"authorization_url": start_url, "state": state, "expires_at": expires_at}


def complete(args: dict[str, Any]) -> Response:
    """Handle the provider's redirect back; see the module docstring."""
    data = states.take(FLOW, args.get("state"))
    if data is None:
        raise Problem(
            400,
            "Unknown, expired or already used `state`: start again with "
            "POST /api/v1/integrations/{id}/oauth/authorize.",
            errors={"state": ["unknown, expired or already used"]},
        )
    tenant_id = str(data.get("tenant_id"))
    actor = {
        "tenant_id": tenant_id,
        "actor_key_id": data.get("key_id"),
        "actor_user_id": data.get("user_id"),
    }
    integration_id = data["integration_id"]
    return_to = data.get("return_to")
    row = Integration.get_of(tenant_id, Integration.id == integration_id)
    if row is None or row.provider != tokens.OAUTH_PROVIDER:
        return _failed(return_to, integration_id, 404, "not_found", "The integration is gone.")
    if not binding.matches(str(data.get("binding"))):
        message = "the connection was started in another browser"
        _record_failure(row, message, "browser_mismatch", actor, 0.0)
        return _failed(
            return_to, row.id, 400, "browser_mismatch", f"Not connected: {message}; start again."
        )
    if args.get("error"):
        error = str(args["error"])[:100]
        description = " ".join(str(args.get("error_description") or "").split())[:300]
        message = f"the provider answered {error}" + (f" ({description})" if description else "")
        _record_failure(row, message, error, actor, 0.0)
        return _failed(return_to, row.id, 400, error, f"Connection refused: {message}.")
    if not args.get("code"):
        _record_failure(row, "the provider sent no code", "invalid_request", actor, 0.0)
        return _failed(return_to, row.id, 400, "invalid_request", "The provider sent no code.")
    config = _settings(row)
    started = time.perf_counter()
    try:
        token = _exchange(config, str(args["code"]), data)
    except ProviderError as exc:
        _record_failure(row, exc.message, exc.error or "error", actor, started)
        return _failed(
            return_to, row.id, 502, exc.error or "error", f"Connection failed: {exc.message}."
        )
    elapsed = round((time.perf_counter() - started) * 1000, 2)
    with database.atomic():
        tokens.store_new(tenant_id, row.id, token)
        Integration.update_of(tenant_id, status="active", updated_at=utcnow()).where(
            Integration.id == row.id
        ).execute()
        IntegrationLog.create(
            tenant_id=tenant_id,
            integration_id=row.id,
            event_type="oauth.connected",
            event_data={
                "scope": token.get("scope"),
                "refresh_token": bool(token.get("refresh_token")),
            },
            status="success",
            response_time_ms=elapsed,
        )
        summary = {"integration_id": row.id, "scope": _text(token.get("scope"))}
        emit_event("oauth.connected", summary, tenant_id=tenant_id)
        record_audit("oauth.connected", "integration", row.id, summary, **actor)
    if return_to:
        answer = redirect_to(return_to, query={"integration_id": row.id, "oauth": "connected"})
    else:
        answer = result_page(200, "Connected", f"Integration {row.name} is connected.")
    return binding.clear(answer, CALLBACK_PATH)


def _exchange(config: dict[str, Any], code: str, data: dict[str, Any]) -> dict[str, Any]:
    """Trade the code (and the PKCE verifier) for a token set; raise ``ProviderError``."""
    config = {**config, "redirect_uri": data["redirect_uri"]}
    try:
        with _session(config) as session:
            token = dict(
                session.fetch_token(
                    config["token_url"],
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=data["code_verifier"],
                )
            )
    except Exception as exc:  # noqa: BLE001 - classified by describe()
        raise describe(exc, "code exchange") from None
    if not token.get("access_token"):
        raise describe(ValueError("no access_token"), "code exchange")
    return token


def _text(value: Any) -> str | None:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value) if value else None


def _record_failure(
    row: Integration, message: str, error: str, actor: dict[str, Any], started: float
) -> None:
    elapsed = round((time.perf_counter() - started) * 1000, 2) if started else None
    with database.atomic():
        IntegrationLog.create(
            tenant_id=row.tenant_id,
            integration_id=row.id,
            event_type="oauth.connect",
            event_data={"error": error},
            status="error",
            error_message=message,
            response_time_ms=elapsed,
        )
        record_audit("oauth.connect_failed", "integration", row.id, {"error": error}, **actor)


def _failed(
    return_to: str | None, integration_id: str, status: int, error: str, message: str
) -> Response:
    if return_to:
        query = {"integration_id": integration_id, "oauth": "error", "error": error}
        answer = redirect_to(return_to, query=query)
    else:
        answer = result_page(status, "Not connected", message)
    return binding.clear(answer, CALLBACK_PATH)


def status(row: Integration) -> dict[str, Any]:
    """Whether ``row`` is connected, and its token's metadata (never the tokens)."""
    stored = tokens.load(row.tenant_id, row.id)
    if stored is None:
        return {"connected": False}
    return {
        "connected": True,
        "token_type": stored.token_type,
        "scope": stored.scope,
        "expires_at": stored.expires_at,
        "has_refresh_token": stored.refresh_token is not None,
    }


def revoke(row: Integration) -> dict[str, Any]:
    """Revoke the tokens at the provider (when it has ``revoke_url``) and delete them here."""
    stored = tokens.load(row.tenant_id, row.id)
    if stored is None:
        raise Problem(409, f"Integration {row.id!r} is not connected.")
    config = _settings(row)
    at_provider = False
    problem: str | None = "the provider has no revoke_url: its grant stays until revoked there"
    if config.get("revoke_url"):
        try:
            with _session(config) as session:
                for value, hint in (
                    (stored.refresh_token, "refresh_token"),
                    (stored.access_token, "access_token"),
                ):
                    if value:
                        answer = session.revoke_token(
                            config["revoke_url"], token=value, token_type_hint=hint
                        )
                        answer.raise_for_status()
            at_provider, problem = True, None
        except Exception as exc:  # noqa: BLE001 - tokens are deleted here anyway
            problem = describe(exc, "revocation").message
    with database.atomic():
        tokens.delete(row.tenant_id, row.id)
        Integration.update_of(row.tenant_id, status="inactive", updated_at=utcnow()).where(
            Integration.id == row.id
        ).execute()
        summary = {"integration_id": row.id, "revoked_at_provider": at_provider}
        emit_event("oauth.revoked", summary, tenant_id=row.tenant_id)
        record_audit("oauth.revoked", "integration", row.id, {**summary, "provider_error": problem})
    return {"revoked_at_provider": at_provider, "provider_error": problem}
