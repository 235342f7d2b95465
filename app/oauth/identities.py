"""Provider identities linked to users by an admin: the explicit link SSO login never makes alone.

A login whose new identity collides with an existing account (one with a password or an admin
role, or when the integration does not link by email) is refused and audited with the user and
the identity's ``subject``. An admin of the tenant who trusts that identity links it here; the
next login through the integration signs that user in, and its role mapping then applies to
them (they are linked to it). A platform admin's account is linked only by an operator
(a platform key): a tenant admin must not be able to sign in as the operator.
"""

from __future__ import annotations

from typing import Any

import peewee

from app.audit import record_audit
from app.auth.access import current_principal, current_tenant_id
from app.connectors.configs import decrypt_config
from app.oauth.sso import SSO_PROVIDER
from app.store.db import database
from app.store.models import Integration, Membership, SsoIdentity, User
from app.web.problems import Problem


def sso_integration_of_tenant(integration_id: str) -> Integration:
    """The tenant's ``oidc`` integration ``integration_id``, or a 404/409 problem."""
    row = Integration.get_of(current_tenant_id(), Integration.id == integration_id)
    if row is None:
        raise Problem(404, f"No integration {integration_id!r}.")
    if row.provider != SSO_PROVIDER:
        raise Problem(409, f"Integration {integration_id!r} is not an SSO integration (oidc).")
    return row


def identities(row: Integration) -> Any:
    """The identities linked through ``row`` (a query: paginated by the caller)."""
    return (
        SsoIdentity.of(row.tenant_id)
        .where(SsoIdentity.integration == row.id)
        .order_by(SsoIdentity.created_at, SsoIdentity.id)
    )


def link(row: Integration, user_id: str, subject: str) -> SsoIdentity:
    """Link the provider's ``subject`` (at ``row``'s issuer) to the tenant's member ``user_id``."""
    tenant_id = row.tenant_id
    member = Membership.get_of(tenant_id, Membership.user == user_id)
    user = User.get_or_none(User.id == user_id) if member is not None else None
    if user is None:
        raise Problem(404, f"No member {user_id!r} in this tenant.")
    if user.platform_admin and not current_principal().platform:
        raise Problem(
            403, "Only an operator (a platform key) may link an identity to a platform admin."
        )
    issuer = decrypt_config(row.config)["issuer"]
    try:
        with database.atomic():
            identity = SsoIdentity.create(
                tenant_id=tenant_id,
                user=user,
                integration=row.id,
                issuer=issuer,
                subject=subject,
                email=user.email,
            )
            record_audit(
                "sso.identity_linked",
                "user",
                user.id,
                {"integration_id": row.id, "issuer": issuer, "subject": subject},
            )
    except peewee.IntegrityError:
        raise Problem(
            409,
            "This identity is already linked in this tenant: unlink it first.",
            errors={"subject": ["already linked"]},
        ) from None
    return identity


def unlink(row: Integration, identity_id: str) -> None:
    """Remove a linked identity: its owner no longer signs in with it (session keys already
    issued run out as usual)."""
    with database.atomic():
        identity = SsoIdentity.get_of(
            row.tenant_id, (SsoIdentity.id == identity_id) & (SsoIdentity.integration == row.id)
        )
        if identity is None:
            raise Problem(404, f"No identity {identity_id!r} of this integration.")
        identity.delete_instance()
        record_audit(
            "sso.identity_unlinked",
            "user",
            identity.user_id,
            {"integration_id": row.id, "subject": identity.subject},
        )
