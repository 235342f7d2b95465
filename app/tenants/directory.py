"""Finding tenants and the tenants a user may act in."""

from __future__ import annotations

from dataclasses import dataclass

from app.store.models import Membership, Tenant, User
from app.web.problems import Problem


@dataclass(frozen=True)
class Seat:
    """A tenant a user may sign in to, and their role there."""

    tenant: Tenant
    role: str

    def view(self) -> dict[str, str]:
        return {
            "id": self.tenant.id,
            "external_id": self.tenant.external_id,
            "name": self.tenant.name,
            "role": self.role,
        }


def find_tenant(name: str) -> Tenant | None:
    """The live tenant whose id or ``external_id`` is ``name`` (not one being deleted)."""
    tenant = Tenant.get_or_none((Tenant.id == name) | (Tenant.external_id == name))
    return None if tenant is None or tenant.status == "deleting" else tenant


def seats(user: User) -> list[Seat]:
    """The active tenants ``user`` is a member of, oldest membership first."""
    rows = (
        Membership.select(Membership, Tenant)
        .join(Tenant, on=(Membership.tenant_id == Tenant.id), attr="tenant")
        .where((Membership.user == user.id) & (Tenant.status == "active"))
        .order_by(Membership.created_at, Membership.id)
    )
    return [Seat(getattr(row, "tenant"), row.role) for row in rows]  # noqa: B009 - joined


def choose_seat(user: User, requested: str | None) -> tuple[Seat, list[Seat]]:
    """The tenant a login answers a key for (``requested``, else the user's first) and every
    tenant the user could have chosen. Platform admins may choose any tenant (as admin)."""
    choices = seats(user)
    if requested is not None:
        for seat in choices:
            if requested in (seat.tenant.id, seat.tenant.external_id):
                return seat, choices
        tenant = find_tenant(requested) if user.platform_admin else None
        if tenant is None:
            raise Problem(
                403,
                f"You are not a member of an active tenant {requested!r}.",
                errors={"tenant": ["not a tenant of yours"]},
            )
        return Seat(tenant, "admin"), choices
    if choices:
        return choices[0], choices
    if user.platform_admin:
        default = find_tenant("default")
        if default is not None:
            return Seat(default, "admin"), choices
    raise Problem(403, "You are not a member of any active tenant.")
