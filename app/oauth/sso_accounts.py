"""Which account an SSO login signs in, and with which role: the rules of ``app.oauth.sso``.

The email must be one well-formed address in an allowed domain (checked before any domain
rule), never one the provider marks unverified. A known identity (issuer + subject, in the
integration's tenant) signs its user in. A new one links to an existing account only when the
signed-in user asked for it, or — by email — when the integration opts in, the provider
asserts ``email_verified: true`` and the account has no password and no admin role anywhere;
else a new account is provisioned when that is on. The role mapping sets the role in this
tenant of the users this integration provisioned or linked, never anyone else's.
"""

from __future__ import annotations

import re
from typing import Any

from app.auth.access import ROLE_SCOPES, bump_auth_epoch
from app.store.models import Integration, Membership, SsoIdentity, User, utcnow

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


def checked_email(config: dict[str, Any], claims: dict[str, Any]) -> str:
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


def find_or_create_user(
    row: Integration,
    config: dict[str, Any],
    claims: dict[str, Any],
    email: str,
    link_user_id: str | None,
) -> tuple[User, SsoIdentity, str]:
    """The user this login signs in, their identity at this provider, and how they were found:
    ``known`` (their identity), ``linked`` (an existing account: by email, or the signed-in
    ``link_user_id`` who asked to link their own) or ``provisioned`` (a new account)."""
    tenant_id = row.tenant_id
    identity = SsoIdentity.get_of(
        tenant_id, SsoIdentity.issuer == claims["iss"], SsoIdentity.subject == claims["sub"]
    )
    how = "known"
    user: User | None
    if identity is not None:
        if link_user_id and identity.user_id != link_user_id:
            raise LoginRefused(409, "identity_taken", "this identity signs in as another user")
        user = User.get_by_id(identity.user_id)
        identity.email, identity.last_login_at = email, utcnow()
        identity.save()
    else:
        if link_user_id:  # the user asked for it, signed in, from this browser
            user = User.get_or_none(User.id == link_user_id)
            if user is None:
                raise LoginRefused(409, "unavailable", "the user asking to link is gone")
        else:
            user = User.get_or_none(User.email == email)
            if user is not None:
                _check_link(config, claims, user)
        if user is not None:
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
        or (  # across tenants on purpose: an admin anywhere is never linked by email
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


def apply_role(
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
