"""``/tenants`` (operators' platform keys), ``/usage`` and ``/members`` (a tenant's own)."""

from __future__ import annotations

from typing import Any

import peewee
import redis
from flask import current_app
from flask.views import MethodView

from app.audit import record_audit
from app.auth.access import bump_auth_epoch, current_principal, current_tenant_id
from app.auth.keys import hash_secret
from app.events.catalog import emit_event
from app.events.outbox import wake_dispatcher
from app.limits.enforce import usage_buffer
from app.limits.usage import read_tenant
from app.store.db import database
from app.store.models import DEFAULT_TENANT_ID, Membership, Tenant, User, utcnow
from app.store.redis import get_redis
from app.store.retention import tenant_days
from app.tenants.erasure import start_erasure
from app.tenants.schemas import (
    RETENTION_KINDS,
    ErasureSchema,
    MemberPageSchema,
    MemberSchema,
    MemberUpdateSchema,
    RetentionSchema,
    RetentionUpdateSchema,
    TenantPageSchema,
    TenantQueryArgsSchema,
    TenantSchema,
    UsageArgsSchema,
    UsageSchema,
)
from app.web.api import Blueprint, PageArgsSchema, links_to, paginate
from app.web.problems import Problem

blp = Blueprint("tenants", __name__, url_prefix="/api/v1", description="Tenants and members")


def _operator() -> None:
    current_principal().require_platform()


def get_tenant(tenant_id: str) -> Tenant:
    """The tenant whose id or external_id is ``tenant_id`` (operators only), or a 404."""
    row = Tenant.get_or_none((Tenant.id == tenant_id) | (Tenant.external_id == tenant_id))
    if row is None:
        raise Problem(404, f"No tenant {tenant_id!r}.")
    return row


def tenant_view(row: Tenant) -> dict[str, Any]:
    """The tenant as the API shows it (and its events carry)."""
    return TenantSchema().dump(row)


def _announce(verb: str, row: Tenant, audit: dict[str, Any]) -> None:
    """Audit ``tenant.<verb>`` and emit it in the default tenant, the operator's own."""
    record_audit(f"tenant.{verb}", "tenant", row.id, audit, tenant_id=DEFAULT_TENANT_ID)
    emit_event(f"tenant.{verb}", tenant_view(row), tenant_id=DEFAULT_TENANT_ID)


def _external_id_taken(external_id: str) -> Problem:
    return Problem(
        409,
        f"Another tenant has the external_id {external_id!r}.",
        errors={"external_id": ["already used by another tenant"]},
    )


@blp.route("/tenants")
class Tenants(MethodView):
    @blp.auth("admin")
    @blp.arguments(TenantQueryArgsSchema, location="query")
    @blp.response(200, TenantPageSchema)
    @blp.problem(403, "Not an operator's platform key")
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List tenants (operators), filtered by status or by part of the name or external_id."""
        _operator()
        query = Tenant.select()
        if args.get("status"):
            query = query.where(Tenant.status == args["status"])
        if args.get("q"):
            query = query.where(
                Tenant.name.contains(args["q"]) | Tenant.external_id.contains(args["q"])
            )
        return paginate(query.order_by(Tenant.created_at.desc(), Tenant.id), args)

    @blp.auth("admin")
    @blp.arguments(TenantSchema)
    @blp.response(201, TenantSchema)
    @blp.problem(403, "Not an operator's platform key")
    @blp.problem(409, "The external_id is taken")
    @blp.doc(
        **links_to(
            "tenant_id",
            *(f"{m} /api/v1/tenants/{{tenant_id}}" for m in ("GET", "PATCH", "DELETE")),
            "POST /api/v1/tenants/{tenant_id}/suspend",
            "POST /api/v1/tenants/{tenant_id}/resume",
            "GET /api/v1/tenants/{tenant_id}/usage",
        )
    )
    def post(self, data: dict[str, Any]) -> Tenant:
        """Create a tenant (operators): a customer organisation with its own everything."""
        _operator()
        try:
            with database.atomic():
                row = Tenant.create(**data)
                _announce("created", row, tenant_view(row))
        except peewee.IntegrityError as exc:
            raise _external_id_taken(data["external_id"]) from exc
        return row


@blp.route("/tenants/<tenant_id>")
class TenantsById(MethodView):
    @blp.auth("admin")
    @blp.response(200, TenantSchema)
    @blp.problem(403, "Not an operator's platform key")
    @blp.problem(404, "No such tenant")
    def get(self, tenant_id: str) -> Tenant:
        """Get a tenant by id or external_id (operators)."""
        _operator()
        return get_tenant(tenant_id)

    @blp.auth("admin")
    @blp.arguments(TenantSchema(partial=True))
    @blp.response(200, TenantSchema)
    @blp.problem(403, "Not an operator's platform key")
    @blp.problem(404, "No such tenant")
    @blp.problem(409, "The external_id is taken, or the tenant is being deleted")
    def patch(self, data: dict[str, Any], tenant_id: str) -> Tenant:
        """Change a tenant's name, external_id, quotas or settings (operators)."""
        _operator()
        try:
            with database.atomic():
                row = get_tenant(tenant_id)
                if row.status == "deleting":
                    raise Problem(409, "This tenant is being deleted.")
                before = tenant_view(row)
                for field, value in data.items():
                    setattr(row, field, value)
                row.updated_at = utcnow()
                row.save()
                after = tenant_view(row)
                changed = {k: after[k] for k in data if before.get(k) != after.get(k)}
                _announce("updated", row, changed)
                if "quotas" in data:
                    bump_auth_epoch()  # keys' cached tenants must see the new quotas
        except peewee.IntegrityError as exc:
            raise _external_id_taken(str(data.get("external_id"))) from exc
        return row

    @blp.auth("admin")
    @blp.response(202, ErasureSchema)
    @blp.problem(403, "Not an operator's platform key")
    @blp.problem(404, "No such tenant")
    @blp.problem(409, "The default tenant cannot be deleted")
    def delete(self, tenant_id: str) -> dict[str, Any]:
        """Delete a tenant and everything it owns (operators): its keys stop at once, an
        erasure job removes its rows, history and secrets; poll the job."""
        _operator()
        with database.atomic():
            row = get_tenant(tenant_id)
            if row.id == DEFAULT_TENANT_ID:
                raise Problem(409, "The default tenant cannot be deleted.")
            job_id = f"erase-{row.id}"
            if row.status != "deleting":
                job_id = start_erasure(row, current_tenant_id())
                record_audit(
                    "tenant.delete_requested", "tenant", row.id, {}, tenant_id=DEFAULT_TENANT_ID
                )
        return {"job_id": job_id, "tenant": row}


def _set_status(tenant_id: str, status: str) -> Tenant:
    _operator()
    with database.atomic():
        row = get_tenant(tenant_id)
        if row.id == DEFAULT_TENANT_ID:
            raise Problem(409, "The default tenant cannot be suspended.")
        if row.status == "deleting":
            raise Problem(409, "This tenant is being deleted.")
        if row.status != status:
            row.status = status
            row.updated_at = utcnow()
            row.save()
            _announce("suspended" if status == "suspended" else "resumed", row, {})
            bump_auth_epoch(required=True)  # its keys: refused (or accepted) everywhere now
            if status == "active":
                database.after_commit(wake_dispatcher)  # its held-back deliveries go now
    return row


@blp.route("/tenants/<tenant_id>/suspend", methods=["POST"])
@blp.auth("admin")
@blp.response(200, TenantSchema)
@blp.problem(403, "Not an operator's platform key")
@blp.problem(404, "No such tenant")
@blp.problem(409, "The default tenant, or a tenant being deleted")
def suspend_tenant(tenant_id: str) -> Tenant:
    """Suspend a tenant (operators): its keys answer 403, its deliveries wait (nothing is
    dropped) until it is resumed."""
    return _set_status(tenant_id, "suspended")


@blp.route("/tenants/<tenant_id>/resume", methods=["POST"])
@blp.auth("admin")
@blp.response(200, TenantSchema)
@blp.problem(403, "Not an operator's platform key")
@blp.problem(404, "No such tenant")
@blp.problem(409, "The default tenant, or a tenant being deleted")
def resume_tenant(tenant_id: str) -> Tenant:
    """Resume a suspended tenant (operators): its keys work and its deliveries go again."""
    return _set_status(tenant_id, "active")


def _usage(row: Tenant, days: int) -> dict[str, Any]:
    try:
        usage_buffer().flush()  # this process's last second of counts, too
        history = read_tenant(get_redis(), row.id, days)
    except redis.RedisError as exc:
        raise Problem(503, "Usage figures are unavailable right now; retry later.") from exc
    return {"tenant_id": row.id, "quotas": row.quotas or {}, "days": history}


@blp.route("/tenants/<tenant_id>/usage", methods=["GET"])
@blp.auth("admin")
@blp.arguments(UsageArgsSchema, location="query")
@blp.response(200, UsageSchema)
@blp.problem(403, "Not an operator's platform key")
@blp.problem(404, "No such tenant")
def tenant_usage(args: dict[str, Any], tenant_id: str) -> dict[str, Any]:
    """A tenant's usage per UTC day (operators): requests, events, deliveries, gateway calls."""
    _operator()
    return _usage(get_tenant(tenant_id), args["days"])


@blp.route("/usage", methods=["GET"])
@blp.auth("keys:read")
@blp.arguments(UsageArgsSchema, location="query")
@blp.response(200, UsageSchema)
def own_usage(args: dict[str, Any]) -> dict[str, Any]:
    """This tenant's usage per UTC day and its quotas."""
    return _usage(current_principal().tenant, args["days"])


def _member_view(membership: Membership, user: User) -> dict[str, Any]:
    return {
        "user_id": user.id,
        "email": user.email,
        "role": membership.role,
        "has_password": bool(user.password_hash),
        "created_at": membership.created_at,
    }


def _member(user_id: str) -> tuple[Membership, User]:
    row = (
        Membership.of(current_tenant_id(), Membership, User)
        .join(User)
        .where(Membership.user == user_id)
        .first()
    )
    if row is None:
        raise Problem(404, f"No member {user_id!r} in this tenant.")
    return row, row.user


@blp.route("/members")
class Members(MethodView):
    @blp.auth("admin")
    @blp.arguments(PageArgsSchema, location="query")
    @blp.response(200, MemberPageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List the tenant's members and their roles (admins)."""
        query = Membership.of(current_tenant_id(), Membership, User).join(User)
        page = paginate(query.order_by(Membership.created_at, Membership.id), args)
        page["items"] = [_member_view(m, m.user) for m in page["items"]]
        return page

    @blp.auth("admin")
    @blp.arguments(MemberSchema)
    @blp.response(201, MemberSchema)
    @blp.doc(
        **links_to(
            "user_id",
            "PATCH /api/v1/members/{user_id}",
            "DELETE /api/v1/members/{user_id}",
            value="$response.body#/user_id",
        )
    )
    @blp.problem(409, "Already a member")
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Add a user to the tenant with a role (admins); a new email creates the user."""
        principal = current_principal()
        email = data["email"].strip().lower()
        password = data.get("password")
        hashed = hash_secret(password, current_app.config["BCRYPT_ROUNDS"]) if password else ""
        with database.atomic():
            user = User.get_or_none(User.email == email)
            if user is None:
                user = User.create(email=email, password_hash=hashed)
            if Membership.get_of(principal.tenant_id, Membership.user == user.id) is not None:
                raise Problem(409, f"{email} is already a member of this tenant.")
            membership = Membership.create(
                tenant_id=principal.tenant_id, user=user, role=data["role"]
            )
            record_audit("member.added", "user", user.id, {"email": email, "role": data["role"]})
        return _member_view(membership, user)


@blp.route("/members/<user_id>")
class MembersById(MethodView):
    @blp.auth("admin")
    @blp.arguments(MemberUpdateSchema)
    @blp.response(200, MemberSchema)
    @blp.problem(404, "No such member")
    def patch(self, data: dict[str, Any], user_id: str) -> dict[str, Any]:
        """Change a member's role in the tenant (admins); their keys follow at once."""
        with database.atomic():
            membership, user = _member(user_id)
            before = membership.role
            membership.role = data["role"]
            membership.save()
            record_audit("member.updated", "user", user.id, {"role": [before, data["role"]]})
            bump_auth_epoch(required=True)
        return _member_view(membership, user)

    @blp.auth("admin")
    @blp.response(204)
    @blp.problem(404, "No such member")
    @blp.problem(409, "The caller's own membership")
    def delete(self, user_id: str) -> None:
        """Remove a member from the tenant (admins); their keys of this tenant stop at once."""
        principal = current_principal()
        if principal.user is not None and principal.user.id == user_id:
            raise Problem(409, "You cannot remove yourself; ask another admin.")
        with database.atomic():
            membership, user = _member(user_id)
            membership.delete_instance()
            record_audit("member.removed", "user", user.id, {"email": user.email})
            bump_auth_epoch(required=True)


def _retention_view(tenant: Tenant) -> dict[str, Any]:
    config, chosen = current_app.config, tenant.retention or {}
    view = {}
    for kind in RETENTION_KINDS:
        low, high = config[f"RETENTION_TENANT_RANGE_{kind.upper()}"]
        view[kind] = {
            "days": tenant_days(config, kind, chosen.get(kind)),
            "chosen": chosen.get(kind),
            "default": config[f"RETENTION_DAYS_{kind.upper()}"],
            "min": low,
            "max": high,
        }
    return view


@blp.route("/retention")
class Retention(MethodView):
    @blp.auth("admin")
    @blp.response(200, RetentionSchema)
    def get(self) -> dict[str, Any]:
        """This tenant's retention: days kept per kind, its choices and the operator's bounds."""
        return _retention_view(Tenant.get_by_id(current_tenant_id()))

    @blp.auth("admin")
    @blp.arguments(RetentionUpdateSchema)
    @blp.response(200, RetentionSchema)
    def patch(self, data: dict[str, Any]) -> dict[str, Any]:
        """Choose how long this tenant's history is kept (null: the global period), within the
        bounds the operator set (422 naming the kind otherwise); audited."""
        config = current_app.config
        errors = {}
        for kind, days in data.items():
            low, high = config[f"RETENTION_TENANT_RANGE_{kind.upper()}"]
            if days is not None and not low <= days <= high:
                errors[kind] = [f"must be from {low} to {high} days (the operator's bounds)"]
        if errors:
            kind = next(iter(errors))
            raise Problem(422, f"Invalid `{kind}`: {errors[kind][0]}", errors=errors)
        with database.atomic():
            tenant = Tenant.get_by_id(current_tenant_id())
            chosen = {**(tenant.retention or {}), **data}
            tenant.retention = {k: v for k, v in chosen.items() if v is not None} or None
            tenant.updated_at = utcnow()
            tenant.save()
            record_audit("retention.updated", "tenant", tenant.id, data)
        return _retention_view(tenant)
