"""``/api-keys``: create, list, read, revoke and rotate API keys, and read their usage."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from flask import request
from flask.views import MethodView

from app.api_keys.bounds import bound_child, outlives_session
from app.api_keys.schemas import (
    USAGE_WINDOWS,
    ApiKeyCreatedSchema,
    ApiKeyPageSchema,
    ApiKeyQueryArgsSchema,
    ApiKeySchema,
    ApiKeyUsageSchema,
    RotateSchema,
    UsageArgsSchema,
)
from app.audit import record_audit, record_change
from app.auth.access import bump_auth_epoch, current_principal
from app.auth.issuing import issue_key, new_secret, rotate_key
from app.limits.enforce import usage_buffer
from app.limits.quotas import check_room
from app.limits.usage import STATUS_FIELDS, read
from app.store.db import database
from app.store.models import DEFAULT_TENANT_ID, ApiKey, utcnow
from app.store.redis import get_redis
from app.web.api import Blueprint, links_to, paginate
from app.web.problems import Problem

log = logging.getLogger(__name__)

blp = Blueprint("api_keys", __name__, url_prefix="/api/v1/api-keys", description="API keys")


def _visible_keys() -> Any:
    """The tenant's keys: admins see every one, others only those owned by their user; only
    operators (platform keys) see platform keys."""
    principal = current_principal()
    query = ApiKey.of(principal.tenant_id)
    if not principal.platform:
        query = query.where(ApiKey.platform == False)  # noqa: E712 - SQL, not Python
    if principal.is_admin:
        return query
    if principal.key.created_by_id is None:  # an ownerless key sees only itself
        return query.where(ApiKey.id == principal.key.id)
    return query.where(ApiKey.created_by == principal.key.created_by_id)


def get_visible_key(key_id: str) -> ApiKey:
    """The key ``key_id`` if the caller may see it, else 404 (no existence leak)."""
    row = _visible_keys().where(ApiKey.id == key_id).first()
    if row is None:
        raise Problem(404, f"No API key {key_id!r}.")
    return row


def get_manageable_key(key_id: str) -> ApiKey:
    """A visible key the caller may revoke or rotate: one with no scope the caller lacks.

    Otherwise a narrow key could rotate a broader sibling and take over its new secret.
    """
    row = get_visible_key(key_id)
    principal = current_principal()
    beyond = sorted(set(row.permissions or ()) - principal.scopes)
    if beyond and not principal.is_admin:
        raise Problem(
            403,
            "This key cannot manage a key holding scopes it lacks: " + ", ".join(beyond) + ".",
            missing_scopes=beyond,
        )
    return row


def key_event_data(row: ApiKey) -> dict[str, Any]:
    """Event payload for key changes: never the secret or hash."""
    return ApiKeySchema().dump(row)


@blp.route("")
class ApiKeys(MethodView):
    @blp.auth("keys:read")
    @blp.arguments(ApiKeyQueryArgsSchema, location="query")
    @blp.response(200, ApiKeyPageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List API keys (secrets are never shown)."""
        query = _visible_keys()
        if not args["include_revoked"]:
            query = query.where(ApiKey.revoked_at.is_null())
        return paginate(query.order_by(ApiKey.created_at.desc(), ApiKey.id), args)

    @blp.auth("keys:write")
    @blp.arguments(ApiKeySchema)
    @blp.response(201, ApiKeyCreatedSchema)
    @blp.problem(422, "Invalid fields, or `expires_at` not in the future (see `errors`)")
    @blp.doc(
        **links_to(
            "key_id",
            "GET /api/v1/api-keys/{key_id}",
            "DELETE /api/v1/api-keys/{key_id}",
            "POST /api/v1/api-keys/{key_id}/rotate",
            "GET /api/v1/api-keys/{key_id}/usage",
        )
    )
    def post(self, data: dict[str, Any]) -> ApiKey:
        """Create an API key; the secret is in `key`, returned only this once.

        The new key never exceeds the calling key: its `allowed_ips` lie within the caller's,
        its `expires_at` is no later (non-admins: its `rate_limit` is no higher), else 422;
        left unset, these take the caller's values. A login session's key (`sb_sess_…`)
        passes on its expiry as the default; a key that outlives the session needs an explicit
        `expires_at` (a later time, or `null` for never), audited as
        `api_key.outlives_session`.
        """
        principal = current_principal()
        missing = sorted(set(data["permissions"]) - principal.scopes)
        if missing and not principal.is_admin:
            raise Problem(
                403,
                "A key cannot grant scopes its creator lacks: " + ", ".join(missing) + ".",
                missing_scopes=missing,
            )
        if data["platform"] and not principal.platform:
            raise Problem(
                403,
                "Only a platform key may create a platform key: a tenant's key creates keys of "
                "its own tenant.",
            )
        explicit = set(request.get_json(silent=True) or ())
        data = bound_child(data, principal.key, explicit, admin=principal.is_admin)
        prepared = new_secret()  # bcrypt before the transaction: SQLite's write lock stays short
        # A platform key lives in the default tenant (the operator's), never in a customer's,
        # whichever tenant the request acts in: erasing a tenant must not take it along.
        tenant_id = DEFAULT_TENANT_ID if data["platform"] else principal.tenant_id
        with database.atomic():
            if not data["platform"]:
                active = ApiKey.of(tenant_id).where(
                    ApiKey.revoked_at.is_null() & (ApiKey.platform == False)  # noqa: E712
                )
                check_room(tenant_id, "max_keys", active)
            row, secret = issue_key(
                owner=principal.user, prepared=prepared, tenant_id=tenant_id, **data
            )
            view = key_event_data(row)
            record_change("api_key", "created", row.id, view, view)
            if outlives_session(data, principal.key):
                record_audit(
                    "api_key.outlives_session",
                    "api_key",
                    row.id,
                    {
                        "session_key_id": principal.key.id,
                        "session_expires_at": key_event_data(principal.key)["expires_at"],
                        "expires_at": view["expires_at"],
                    },
                )
        row.key = secret
        return row


@blp.route("/<key_id>")
class ApiKeysById(MethodView):
    @blp.auth("keys:read")
    @blp.response(200, ApiKeySchema)
    @blp.problem(404, "No such API key")
    def get(self, key_id: str) -> ApiKey:
        """Get one API key (never its secret)."""
        return get_visible_key(key_id)

    @blp.auth("keys:write")
    @blp.response(204)
    @blp.problem(404, "No such API key")
    def delete(self, key_id: str) -> None:
        """Revoke an API key; it stops working at once."""
        with database.atomic():
            row = get_manageable_key(key_id)
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                row.previous_valid_until = None
                row.save()
                record_change("api_key", "revoked", row.id, {"name": row.name}, key_event_data(row))
                bump_auth_epoch(required=True)


@blp.route("/<key_id>/rotate", methods=["POST"])
@blp.auth("keys:write")
@blp.arguments(RotateSchema, required=False)  # no body: the default grace period
@blp.response(200, ApiKeyCreatedSchema)
@blp.problem(404, "No such API key")
@blp.problem(409, "The key is revoked")
def rotate(data: dict[str, Any], key_id: str) -> ApiKey:
    """Rotate a key's secret; the old one keeps working for the grace period."""
    kind = get_manageable_key(key_id).key_prefix[3:7]
    prepared = new_secret(kind)  # bcrypt before the transaction: SQLite's write lock stays short
    with database.atomic():
        row = get_manageable_key(key_id)
        if row.revoked_at is not None:
            raise Problem(409, "A revoked key cannot be rotated.")
        secret = rotate_key(row, data["grace_period_seconds"], prepared)
        record_change("api_key", "rotated", row.id, data, key_event_data(row))
        bump_auth_epoch(required=True)
    row.key = secret
    return row


@blp.route("/<key_id>/usage", methods=["GET"])
@blp.auth("keys:read")
@blp.arguments(UsageArgsSchema, location="query")
@blp.response(200, ApiKeyUsageSchema)
@blp.problem(404, "No such API key")
def usage(args: dict[str, Any], key_id: str) -> dict[str, Any]:
    """Hourly request counts of a key: by status class, rate-limited, gateway bytes."""
    row = get_visible_key(key_id)
    try:
        usage_buffer().flush()  # this process's last second of counts, too
        buckets = read(get_redis(), row.id, USAGE_WINDOWS[args["window"]])
    except redis.RedisError as exc:
        log.warning("could not read usage of %s: %s", row.id, exc)
        raise Problem(503, "Usage analytics are unavailable right now; retry later.") from exc
    return {
        "key_id": row.id,
        "window": args["window"],
        "buckets": buckets,
        "totals": usage_totals(buckets),
    }


def usage_totals(buckets: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Sum every counter over ``buckets``."""
    counters = ("requests", *STATUS_FIELDS, "rate_limited", "gateway_bytes")
    return {name: sum(int(bucket[name]) for bucket in buckets) for name in counters}
