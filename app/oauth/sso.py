"""SSO login for Switchboard's users through an ``oidc`` integration (authorization code + PKCE).

``start_login`` redirects to the identity provider with a single-use state, a nonce and a PKCE
challenge. ``complete_login`` exchanges the code, validates the ID token (``idtoken``), checks
the email address and its domain (and Entra ID's ``tid``), and finds the user in the
integration's tenant by their provider identity (issuer + subject). A new identity signs in:

- an existing account with that email only when the integration opts in
  (``link_existing_by_email``), the provider asserts ``email_verified: true``, and the account
  has no password and no admin role anywhere (those are linked explicitly, never by email);
- else a new account, when auto-provisioning is on, as a member of this tenant only.

Anything else is refused, with an audit entry. The claim → role mapping sets the role in this
tenant of users this integration provisioned or linked, never anyone else's. The answer is a
session key of the tenant exactly like ``/auth/login``'s. Users created here have no password
and cannot log in with one until it is set.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import peewee
from flask import Response, current_app

from app.audit import record_audit
from app.auth.access import ROLE_SCOPES, bump_auth_epoch
from app.auth.issuing import issue_session_key, new_secret
from app.connectors.configs import decrypt_config
from app.connectors.contract import timeout_seconds
from app.oauth import binding, states
from app.oauth.discovery import provider_metadata
from app.oauth.idtoken import InvalidIdToken, verify_id_token
from app.oauth.pages import checked_return_to, redirect_to
from app.oauth.pkce import new_code_verifier
from app.outbound.oauth import ProviderError, describe, oauth_session
from app.store.db import database
from app.store.models import (
    DEFAULT_TENANT_ID,
    Integration,
    Membership,
    SsoDomain,
    SsoIdentity,
    Tenant,
    User,
    utcnow,
)
from app.web.problems import Problem

FLOW = "sso"
CALLBACK_PATH = "/api/v1/auth/sso/callback"
SSO_PROVIDER = "oidc"
#: Higher wins when several role mappings match.
ROLE_RANK = {"readonly": -1, "member": 0, "admin": 1}


class LoginRefused(Exception):
    """The login is refused with an HTTP status and a reason that is safe to show."""

    def __init__(
        self, status: int, error: str, reason: str, audit: dict[str, Any] | None = None
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason
        self.audit = audit or {}


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


def start_login(integration_id: str, return_to: str | None) -> Response:
    """Redirect the browser to the identity provider."""
    row, config = _sso_integration(integration_id)
    return_to = checked_return_to(return_to)
    metadata = _metadata(config)
    verifier, nonce = new_code_verifier(), secrets.token_urlsafe(32)
    # A browser login is bound to the browser that started it (login CSRF): the callback must
    # bring back this cookie, so nobody can make a victim's browser finish their own login.
    bound = binding.new_binding() if return_to else None
    state, _ = states.issue(
        FLOW,
        {
            "integration_id": row.id,
            "code_verifier": verifier,
            "nonce": nonce,
            "redirect_uri": config["redirect_uri"],
            "return_to": return_to,
            "binding": bound[1] if bound else None,
        },
    )
    with _session(config) as session:
        url, _ = session.create_authorization_url(
            metadata["authorization_endpoint"], state=state, code_verifier=verifier, nonce=nonce
        )
    response = redirect_to(url)
    if bound:
        binding.attach(response, bound[0], CALLBACK_PATH)
    return response


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
    email = _checked_email(config, claims)
    try:
        prepared = new_secret("sess")  # bcrypt before the transaction (SQLite's write lock)
        with database.atomic():
            user, identity, how = _find_or_create_user(row, config, claims, email)
            role = _apply_role(row, config, claims, user, identity)
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


_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def valid_email(value: Any) -> str | None:
    """``value`` as a lower-case email address with one ``@`` and a well-formed domain, or None.

    Checked before any domain rule: ``eve@evil.com@example.com`` has two ``@`` and is no
    address of ``example.com``.
    """
    if not isinstance(value, str):
        return None
    email = value.strip().lower()
    if email.count("@") != 1 or len(email) > 320:
        return None
    local, domain = email.split("@")
    labels = domain.split(".")
    if not local or any(c.isspace() or ord(c) < 32 for c in local):
        return None
    if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        return None
    return email


def _checked_email(config: dict[str, Any], claims: dict[str, Any]) -> str:
    """The user's email, well formed, not known to be unverified and in an allowed domain (and
    the Entra tenant matches)."""
    tenant = config.get("tenant_id")
    if tenant and claims.get("tid") != tenant:
        raise LoginRefused(403, "wrong_tenant", "the account belongs to another Entra ID tenant")
    raw = claims.get(config.get("email_claim", "email"))
    if not isinstance(raw, str) or not raw.strip():
        raise LoginRefused(403, "no_email", "the identity provider sent no email address")
    email = valid_email(raw)
    if email is None:
        raise LoginRefused(403, "invalid_email", "the email address is malformed")
    if claims.get("email_verified") is False:
        raise LoginRefused(403, "email_unverified", "the email address is not verified")
    if len(str(claims["sub"])) > 255:
        raise LoginRefused(403, "invalid_claims", "the subject is too long")
    allowed = {domain.lower() for domain in config.get("allowed_domains", [])}
    if email.rsplit("@", 1)[1] not in allowed:
        raise LoginRefused(403, "domain_not_allowed", "the email domain is not allowed")
    return email


def _find_or_create_user(
    row: Integration, config: dict[str, Any], claims: dict[str, Any], email: str
) -> tuple[User, SsoIdentity, str]:
    """The user this login signs in, their identity at this provider, and how they were found:
    ``known`` (their identity), ``linked`` (an existing account, by email) or
    ``provisioned`` (a new account)."""
    tenant_id = row.tenant_id
    identity = SsoIdentity.get_of(
        tenant_id, SsoIdentity.issuer == claims["iss"], SsoIdentity.subject == claims["sub"]
    )
    how = "known"
    user: User | None
    if identity is not None:
        user = User.get_by_id(identity.user_id)
        identity.email, identity.last_login_at = email, utcnow()
        identity.save()
    else:
        user = User.get_or_none(User.email == email)
        if user is not None:
            _check_link(config, claims, user)
            how = "linked"
        elif not config.get("auto_provision", False):
            raise LoginRefused(403, "no_account", "there is no Switchboard account for this email")
        else:
            user = User.create(email=email, password_hash="")
            how = "provisioned"
        identity = SsoIdentity.create(
            tenant_id=tenant_id,
            user=user,
            integration=row.id,
            issuer=claims["iss"],
            subject=claims["sub"],
            email=email,
        )
    if user.disabled:
        raise LoginRefused(403, "user_disabled", "this user is disabled")
    return user, identity, how


def _check_link(config: dict[str, Any], claims: dict[str, Any], user: User) -> None:
    """Refuse to sign a new identity in to an existing account unless linking is safe."""
    why: str | None = None
    if not config.get("link_existing_by_email", False):
        why = "this SSO integration does not link existing accounts by email"
    elif claims.get("email_verified") is not True:
        why = "the identity provider does not assert that the email address is verified"
    elif user.password_hash:
        why = "the account has a password: it must be linked explicitly"
    elif (
        user.platform_admin
        or (
            Membership.select().where((Membership.user == user.id) & (Membership.role == "admin"))
        ).exists()
    ):
        why = "the account has an admin role: it must be linked explicitly"
    if why is not None:
        raise LoginRefused(
            403,
            "account_exists",
            f"an account with this email already exists and was not signed in: {why}",
            audit={"user_id": user.id, "subject": str(claims.get("sub"))[:255]},
        )


def _claim_has(value: Any, wanted: str) -> bool:
    if isinstance(value, list):
        return wanted in [str(item) for item in value]
    return value is not None and str(value) == wanted


def _mapped_role(config: dict[str, Any], claims: dict[str, Any]) -> str | None:
    """The role the mapping gives these claims; None when the integration maps no roles."""
    mapping = config.get("role_mapping") or []
    if not mapping:
        return None
    matched = [
        entry["role"]
        for entry in mapping
        if entry["role"] in ROLE_SCOPES
        and _claim_has(claims.get(entry.get("claim", "groups")), entry["value"])
    ]
    if not matched:
        return str(config.get("default_role", "member"))
    return max(matched, key=lambda role: ROLE_RANK.get(role, 0))


def _apply_role(
    row: Integration,
    config: dict[str, Any],
    claims: dict[str, Any],
    user: User,
    identity: SsoIdentity,
) -> str:
    """The user's role in the integration's tenant after this login.

    A user without a membership there gets the mapped (or default) role. With a role mapping,
    every login sets the role — only of users this integration provisioned or linked (their
    identity is its own), never of anyone it did not bring in. Platform admins stay admins.
    """
    tenant_id = row.tenant_id
    membership = Membership.get_of(tenant_id, Membership.user == user.id)
    mapped = _mapped_role(config, claims)
    if membership is None:
        role = mapped or str(config.get("default_role", "member"))
        membership = Membership.create(tenant_id=tenant_id, user=user, role=role)
    elif mapped is not None and mapped != membership.role and identity.integration_id == row.id:
        membership.role = mapped
        membership.save()
        bump_auth_epoch()  # the user's existing keys must see the new role at once
    return "admin" if user.platform_admin else str(membership.role)
