"""SSO login for Switchboard's users through an ``oidc`` integration (authorization code + PKCE).

``start_login`` redirects to the identity provider with a single-use state, a nonce and a PKCE
challenge. ``complete_login`` exchanges the code, validates the ID token (``idtoken``), checks
the email address and its domain (and Entra ID's ``tid``), and finds the user in the
integration's tenant by their provider identity (issuer + subject). A new identity signs in:

- the signed-in user who asked to link their own identity (``start_link``: an API call that
  hands out a single-use start link, so only the browser opening it can finish);
- an existing account with that email only when the integration opts in
  (``link_existing_by_email``), the provider asserts ``email_verified: true``, and the account
  has no password and no admin role anywhere (those are linked explicitly, never by email);
- else a new account, when auto-provisioning is on, as a member of this tenant only.

Anything else is refused, with an audit entry (the rules: ``sso_accounts``). The claim → role
mapping sets the role in this tenant of users this integration provisioned or linked, never
anyone else's. The answer is a session key of the tenant exactly like ``/auth/login``'s. Users
created here have no password and cannot log in with one until it is set.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import peewee
from flask import Response, current_app

from app.audit import record_audit
from app.auth.issuing import issue_session_key, new_secret
from app.connectors.configs import decrypt_config
from app.connectors.contract import timeout_seconds
from app.oauth import binding, states
from app.oauth.discovery import provider_metadata
from app.oauth.idtoken import InvalidIdToken, verify_id_token
from app.oauth.pages import checked_return_to, redirect_to
from app.oauth.pkce import new_code_verifier
from app.oauth.sso_accounts import (
    LoginRefused,
    apply_role,
    checked_email,
    find_or_create_user,
    valid_email,
)
from app.outbound.oauth import ProviderError, describe, oauth_session
from app.store.db import database
from app.store.models import (
    DEFAULT_TENANT_ID,
    Integration,
    SsoDomain,
    Tenant,
    User,
    utcnow,
)
from app.web.problems import Problem

FLOW = "sso"
CALLBACK_PATH = "/api/v1/auth/sso/callback"
SSO_PROVIDER = "oidc"


def sso_integration_row(integration_id: str) -> Integration | None:
    """The SSO integration ``integration_id`` of whichever tenant, or None.

    Across tenants on purpose: a login starts without a key, and the integration (found by
    its id, or by the email domain it claims) is what names the tenant.
    """
    row = Integration.get_or_none(Integration.id == integration_id)
    if row is None or row.provider != SSO_PROVIDER:
        return None
    tenant = Tenant.get_or_none(Tenant.id == row.tenant_id)
    return row if tenant is not None and tenant.status == "active" else None


def discover(email: str) -> dict[str, Any]:
    """The SSO integration that claims ``email``'s domain, and where to sign in; else 404."""
    address = valid_email(email)
    domain = address.rsplit("@", 1)[1] if address else ""
    claim = SsoDomain.get_or_none(SsoDomain.domain == domain)  # a domain is unique: any tenant
    row = sso_integration_row(claim.integration_id) if claim is not None else None
    if row is None or row.status == "inactive":
        raise Problem(404, "No SSO sign-in is set up for this email address.")
    tenant = Tenant.get_by_id(row.tenant_id)
    login = f"{current_app.config['PUBLIC_URL']}/api/v1/auth/sso/{row.id}/login"
    return {
        "integration_id": row.id,
        "login_url": login,
        "tenant": {"id": tenant.id, "external_id": tenant.external_id, "name": tenant.name},
    }


def _sso_integration(integration_id: str) -> tuple[Integration, dict[str, Any]]:
    row = sso_integration_row(integration_id)
    if row is None:
        raise Problem(404, f"No SSO integration {integration_id!r}.")
    if row.status == "inactive":
        raise Problem(409, "This SSO integration is switched off (inactive).")
    config = decrypt_config(row.config)
    config.setdefault("redirect_uri", current_app.config["PUBLIC_URL"] + CALLBACK_PATH)
    return row, config


def _metadata(config: dict[str, Any]) -> dict[str, Any]:
    try:
        return provider_metadata(config["issuer"], timeout_seconds(config))
    except ProviderError as exc:
        raise Problem(502, f"The identity provider is unusable: {exc.message}.") from None


def _session(config: dict[str, Any]) -> Any:
    return oauth_session(
        client_id=config["client_id"],
        client_secret=config.get("client_secret"),
        timeout=timeout_seconds(config),
        auth_method=config.get("token_endpoint_auth_method", "client_secret_basic"),
        redirect_uri=config["redirect_uri"],
        scope=" ".join(config.get("scopes") or ["openid", "email", "profile"]),
    )


def _provider_url(
    row: Integration,
    config: dict[str, Any],
    return_to: str | None,
    bound: str | None,
    link_user_id: str | None = None,
) -> str:
    """Remember a new login's state (``bound``: its binding digest) and return the provider's
    authorization URL for it."""
    metadata = _metadata(config)
    verifier, nonce = new_code_verifier(), secrets.token_urlsafe(32)
    state, _ = states.issue(
        FLOW,
        {
            "integration_id": row.id,
            "code_verifier": verifier,
            "nonce": nonce,
            "redirect_uri": config["redirect_uri"],
            "return_to": return_to,
            "binding": bound,
            "link_user_id": link_user_id,
        },
    )
    with _session(config) as session:
        url, _ = session.create_authorization_url(
            metadata["authorization_endpoint"], state=state, code_verifier=verifier, nonce=nonce
        )
    return str(url)


def start_login(integration_id: str, return_to: str | None) -> Response:
    """Redirect the browser to the identity provider."""
    row, config = _sso_integration(integration_id)
    return_to = checked_return_to(return_to)
    # A browser login is bound to the browser that started it (login CSRF): the callback must
    # bring back this cookie, so nobody can make a victim's browser finish their own login.
    bound = binding.new_binding() if return_to else None
    response = redirect_to(_provider_url(row, config, return_to, bound[1] if bound else None))
    if bound:
        binding.attach(response, bound[0], CALLBACK_PATH)
    return response


def start_link(integration_id: str, user: User, return_to: str | None) -> dict[str, Any]:
    """Start linking ``user``'s own identity at the provider (asked with their key): a
    single-use link that binds the browser opening it, so only that browser's login links."""
    row, config = _sso_integration(integration_id)
    return_to = checked_return_to(return_to)
    cookie, cookie_digest = binding.new_binding()
    url = _provider_url(row, config, return_to, cookie_digest, link_user_id=user.id)
    return {
        "authorization_url": binding.start_link(url, cookie, CALLBACK_PATH),
        "expires_at": utcnow() + timedelta(seconds=states.STATE_TTL_SECONDS),
    }


def complete_login(args: dict[str, Any]) -> Response | dict[str, Any]:
    """Finish a login: the session key as JSON, or a redirect to ``return_to`` carrying it."""
    data = states.take(FLOW, args.get("state"))
    if data is None:
        raise Problem(
            400,
            "Unknown, expired or already used `state`: start the login again.",
            errors={"state": ["unknown, expired or already used"]},
        )
    return_to = data.get("return_to")
    integration_id = data["integration_id"]
    try:
        if data.get("binding") and not binding.matches(data["binding"]):
            raise LoginRefused(400, "browser_mismatch", "the login was started in another browser")
        user, answer, summary = _login(integration_id, args, data)
    except LoginRefused as refused:
        refused_in = sso_integration_row(integration_id)
        if refused_in is not None:
            with database.atomic():
                record_audit(
                    "auth.sso_login_failed",
                    "integration",
                    integration_id,
                    {"error": refused.error, "reason": refused.reason, **refused.audit},
                    tenant_id=refused_in.tenant_id,
                )
        if return_to:
            response = redirect_to(
                return_to, fragment={"error": refused.error, "error_description": refused.reason}
            )
            return binding.clear(response, CALLBACK_PATH)
        raise Problem(refused.status, f"SSO login refused: {refused.reason}.") from None
    if return_to:
        fragment = {
            "key": answer["key"],
            "key_id": answer["key_id"],
            "expires_at": answer["expires_at"].isoformat() + "Z",
        }
        return binding.clear(redirect_to(return_to, fragment=fragment), CALLBACK_PATH)
    return {
        **answer,
        "user": {"id": user.id, "email": user.email, "role": summary.pop("role")},
        **summary,
    }


def _login(
    integration_id: str, args: dict[str, Any], data: dict[str, Any]
) -> tuple[User, dict[str, Any], dict[str, Any]]:
    row = sso_integration_row(integration_id)
    if row is None or row.status == "inactive":
        raise LoginRefused(409, "unavailable", "the SSO integration is gone or switched off")
    config = decrypt_config(row.config)
    config["redirect_uri"] = data["redirect_uri"]
    if args.get("error"):
        error = str(args["error"])[:100]
        raise LoginRefused(401, error, f"the identity provider answered {error}")
    if not args.get("code"):
        raise LoginRefused(400, "invalid_request", "the identity provider sent no code")
    try:
        metadata = provider_metadata(config["issuer"], timeout_seconds(config))
        id_token = _exchange(config, metadata, str(args["code"]), data["code_verifier"])
        claims = verify_id_token(
            id_token,
            metadata=metadata,
            client_id=config["client_id"],
            nonce=data["nonce"],
            timeout=timeout_seconds(config),
        )
    except ProviderError as exc:
        raise LoginRefused(502, exc.error or "provider_error", exc.message) from None
    except InvalidIdToken as exc:
        raise LoginRefused(401, "invalid_id_token", exc.reason) from None
    email = checked_email(config, claims)
    try:
        prepared = new_secret("sess")  # bcrypt before the transaction (SQLite's write lock)
        with database.atomic():
            user, identity, how = find_or_create_user(
                row, config, claims, email, data.get("link_user_id")
            )
            role = apply_role(row, config, claims, user, identity)
            # A customer's identity provider never mints an operator's key: only an SSO
            # integration of the operator's own (default) tenant signs a platform admin in as one.
            operator = bool(user.platform_admin) and row.tenant_id == DEFAULT_TENANT_ID
            key_row, answer = issue_session_key(
                user, role, row.tenant_id, "sso", prepared, platform=operator
            )
            summary: dict[str, Any] = {
                "provisioned": how == "provisioned",
                "linked": how == "linked",
            }
            if how == "linked" and data.get("link_user_id"):
                record_audit(
                    "sso.identity_linked",
                    "user",
                    user.id,
                    {"integration_id": row.id, "subject": identity.subject, "by": "the user"},
                    tenant_id=row.tenant_id,
                    actor_user_id=user.id,
                )
            record_audit(
                "auth.sso_login",
                "api_key",
                key_row.id,
                {"user": user.email, "integration_id": row.id, "role": role, **summary},
                tenant_id=row.tenant_id,
                actor_user_id=user.id,
            )
            summary["role"] = role
    except peewee.IntegrityError:  # the same new user signing in twice at once
        raise LoginRefused(409, "conflict", "a concurrent login created this user; retry") from None
    return user, answer, summary


def _exchange(config: dict[str, Any], metadata: dict[str, Any], code: str, verifier: str) -> str:
    try:
        with _session(config) as session:
            token = session.fetch_token(
                metadata["token_endpoint"],
                grant_type="authorization_code",
                code=code,
                code_verifier=verifier,
            )
    except Exception as exc:  # noqa: BLE001 - classified by describe()
        raise describe(exc, "code exchange") from None
    id_token = token.get("id_token")
    if not isinstance(id_token, str):
        raise InvalidIdToken("the identity provider returned no ID token")
    return id_token
