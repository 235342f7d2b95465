"""Audit trail: who changed what, when, from where — never secrets."""

from __future__ import annotations

from typing import Any

from flask import g, has_request_context

from app.auth.access import client_ip
from app.events.catalog import emit_event
from app.store.models import AuditLog

# Keys whose values are never written to the audit log, at any depth.
_SECRET_WORDS = ("secret", "password", "token", "key_hash", "authorization", "credential")


def scrub(value: Any) -> Any:
    """Replace values of secret-looking keys with a marker, recursively."""
    if isinstance(value, dict):
        return {
            k: "[redacted]" if any(w in str(k).lower() for w in _SECRET_WORDS) else scrub(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def record_audit(
    action: str,
    resource_type: str,
    resource_id: str | None,
    changes: dict[str, Any] | None = None,
    *,
    tenant_id: str | None = None,
    actor_key_id: str | None = None,
    actor_user_id: str | None = None,
) -> AuditLog:
    """Write one audit entry for the current request (call inside the write's transaction).

    The actor is the request's API key and its owner, and the entry belongs to the tenant the
    request acts in; requests without a key (an OAuth callback, an SSO login) name the tenant
    with ``tenant_id`` and the actor with ``actor_key_id``/``actor_user_id``.
    """
    principal = g.get("principal") if has_request_context() else None
    tenant = tenant_id or (principal.tenant_id if principal else None)
    if tenant is None:
        raise ValueError("an audit entry needs the tenant it belongs to")
    return AuditLog.create(
        tenant_id=tenant,
        actor_key_id=principal.key.id if principal else actor_key_id,
        actor_user_id=principal.user.id if principal and principal.user else actor_user_id,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        changes=scrub(changes or {}),
        ip=client_ip() if has_request_context() else None,
        request_id=g.get("request_id") if has_request_context() else None,
    )


def record_change(
    resource: str, verb: str, resource_id: str, audit: dict[str, Any], event: dict[str, Any]
) -> None:
    """Audit ``<resource>.<verb>`` and emit the event of the same name in the request's
    tenant, in this transaction."""
    entry = record_audit(f"{resource}.{verb}", resource, resource_id, audit)
    emit_event(f"{resource}.{verb}", event, tenant_id=entry.tenant_id)


def record_update(
    resource: str, resource_id: str, before: dict[str, Any], after: dict[str, Any], fields: Any
) -> None:
    """Audit and emit ``<resource>.updated`` with the fields of ``fields`` that really changed."""
    changes = {k: after[k] for k in fields if before.get(k) != after.get(k)}
    record_change(resource, "updated", resource_id, changes, {**after, "changed": sorted(changes)})
