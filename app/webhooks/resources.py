"""``/webhooks`` and ``/deliveries``: endpoints, tests, secret rotation, delivery history."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from flask.views import MethodView

from app.audit import record_audit, record_change, record_update
from app.auth.access import current_tenant_id
from app.events.catalog import emit_event, event_catalog, is_valid_pattern
from app.events.dispatch import requeue_refused
from app.events.fifo import promote_after_commit
from app.events.filters import FilterInvalid, compile_filter, parse_path
from app.events.held import hold_pending, recover_failed, recover_outage, release_held
from app.events.outbox import wake_dispatcher
from app.limits.quotas import check_room
from app.outbound.guard import UnsafeURL
from app.outbound.session import check_outbound_url, unsafe_url_reason
from app.store.db import database
from app.store.models import (
    Delivery,
    DeliveryAttempt,
    Event,
    Integration,
    IntegrationLog,
    Webhook,
    utcnow,
)
from app.store.secretbox import encrypt
from app.stream import kinds
from app.web.api import Blueprint, links_to, paginate
from app.web.keyset import paginate_keyset
from app.web.problems import Problem
from app.webhooks.credentials import CredentialsInvalid, prepare
from app.webhooks.endpoint import send_to_endpoint
from app.webhooks.schemas import (
    DeliveryPageSchema,
    DeliveryQueryArgsSchema,
    DeliverySchema,
    RecoveredSchema,
    RecoverSchema,
    SecretRotatedSchema,
    WebhookCreatedSchema,
    WebhookEnabledSchema,
    WebhookEnableSchema,
    WebhookPageSchema,
    WebhookQueryArgsSchema,
    WebhookSchema,
    WebhookTestResultSchema,
    WebhookUpdateSchema,
)
from app.webhooks.sender import event_body
from app.webhooks.signing import generate_secret

blp = Blueprint("webhooks", __name__, url_prefix="/api/v1", description="Webhook endpoints")

ROTATION_OVERLAP = timedelta(hours=24)


def get_webhook(webhook_id: str) -> Webhook:
    """The tenant's webhook or a 404 problem."""
    row = Webhook.get_of(current_tenant_id(), Webhook.id == webhook_id)
    if row is None:
        raise Problem(404, f"No webhook {webhook_id!r}.")
    return row


def _invalid(field: str, message: str) -> Problem:
    return Problem(422, f"Invalid `{field}`: {message}", errors={field: [message]})


def _invalid_fields(errors: dict[str, list[str]]) -> Problem:
    field = next(iter(errors))
    return Problem(422, f"Invalid `{field}`: {errors[field][0]}", errors=errors)


def store_credentials(data: dict[str, Any], row: Webhook | None = None) -> None:
    """``headers`` and ``auth`` of ``data`` in their stored form (see
    ``app.webhooks.credentials.prepare``); 422 naming each bad field."""
    try:
        prepare(
            data, row.url if row else None, row.auth if row else None, row.headers if row else None
        )
    except CredentialsInvalid as exc:
        raise _invalid_fields(exc.errors) from exc


def validate_target(data: dict[str, Any], ordering: str = "none") -> None:
    """Check URL safety, event patterns, the integration, the filter and the ordering key
    (422 naming the field; ``ordering``: the webhook's when ``data`` does not set it)."""
    if "payload_filter" in data:
        try:
            compile_filter(data["payload_filter"])
        except FilterInvalid as exc:
            raise _invalid_fields(exc.errors) from exc
        data["payload_filter"] = data["payload_filter"] or None  # {} is no filter
    if data.get("ordering") == "none":
        data.setdefault("ordering_key", None)  # a key means nothing without fifo
    if data.get("ordering_key") is not None:
        if data.get("ordering", ordering) != "fifo":
            raise _invalid("ordering_key", "only applies with `ordering: fifo`")
        try:
            parse_path(data["ordering_key"])
        except ValueError as exc:
            raise _invalid("ordering_key", str(exc)) from exc
    if "url" in data:
        try:
            check_outbound_url(data["url"])
        except UnsafeURL as exc:
            raise _invalid("url", unsafe_url_reason(exc)) from exc
    tenant_id = current_tenant_id()
    if "events" in data:
        catalog = event_catalog(tenant_id)
        unknown = [p for p in data["events"] if not is_valid_pattern(p, catalog)]
        if unknown:
            raise _invalid("events", "unknown event types: " + ", ".join(unknown))
    if "integration_id" in data and not Integration.get_of(
        tenant_id, Integration.id == data["integration_id"]
    ):
        raise _invalid("integration_id", f"no integration {data['integration_id']!r}")


def webhook_view(row: Webhook) -> dict[str, Any]:
    """Event/audit payload for a webhook: never its secret."""
    return WebhookSchema().dump(row)


@blp.route("/webhooks")
class Webhooks(MethodView):
    @blp.auth("webhooks:read")
    @blp.arguments(WebhookQueryArgsSchema, location="query")
    @blp.response(200, WebhookPageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List webhook endpoints (secrets are never shown)."""
        query = Webhook.of(current_tenant_id())
        if args.get("integration_id"):
            query = query.where(Webhook.integration == args["integration_id"])
        if args.get("status"):
            query = query.where(Webhook.status == args["status"])
        return paginate(query.order_by(Webhook.created_at.desc(), Webhook.id), args)

    @blp.auth("webhooks:write")
    @blp.arguments(WebhookSchema)
    @blp.response(201, WebhookCreatedSchema)
    @blp.doc(
        **links_to(
            "webhook_id",
            *(f"{m} /api/v1/webhooks/{{webhook_id}}" for m in ("GET", "PATCH", "DELETE")),
            *(
                f"POST /api/v1/webhooks/{{webhook_id}}/{action}"
                for action in ("test", "rotate-secret", "enable", "recover")
            ),
            "GET /api/v1/webhooks/{webhook_id}/deliveries",
        )
    )
    def post(self, data: dict[str, Any]) -> Webhook:
        """Create a webhook endpoint; its signing secret is returned only this once."""
        validate_target(data)
        store_credentials(data)
        secret = data.pop("secret", None) or generate_secret()
        tenant_id = current_tenant_id()
        with database.atomic():
            check_room(tenant_id, "max_webhooks", Webhook.of(tenant_id))
            row = Webhook.create(
                tenant_id=tenant_id,
                secret=encrypt(secret),
                integration=data.pop("integration_id"),
                **data,
            )
            view = webhook_view(row)
            record_change("webhook", "created", row.id, view, view)
        row.secret = secret  # answered once in plaintext; the stored value stays encrypted
        return row


@blp.route("/webhooks/<webhook_id>")
class WebhooksById(MethodView):
    @blp.auth("webhooks:read")
    @blp.response(200, WebhookSchema)
    @blp.problem(404, "No such webhook")
    def get(self, webhook_id: str) -> Webhook:
        """Get one webhook endpoint (secret redacted)."""
        return get_webhook(webhook_id)

    @blp.auth("webhooks:write")
    @blp.arguments(WebhookUpdateSchema)
    @blp.response(200, WebhookSchema)
    @blp.problem(404, "No such webhook")
    def patch(self, data: dict[str, Any], webhook_id: str) -> Webhook:
        """Update a webhook endpoint; `status` disables (holding deliveries) or re-enables it."""
        held = data.pop("held", None)
        if held is not None and data.get("status") != "active":
            raise _invalid("held", "only applies with `status: active`")
        current = get_webhook(webhook_id)  # checked outside the transaction: DNS, crypto
        validate_target(data, current.ordering)
        store_credentials(data, current)
        with database.atomic():
            row = get_webhook(webhook_id)
            _change(row, data, held or "send")
        return row

    @blp.auth("webhooks:write")
    @blp.response(204)
    @blp.problem(404, "No such webhook")
    def delete(self, webhook_id: str) -> None:
        """Delete a webhook endpoint and its pending deliveries."""
        with database.atomic():
            row = get_webhook(webhook_id)
            view = webhook_view(row)
            row.delete_instance()
            record_change("webhook", "deleted", row.id, {"url": row.url}, view)


def _change(
    row: Webhook, data: dict[str, Any], held: str, since: datetime | None = None
) -> dict[str, int]:
    """Apply ``data`` to the webhook; disabling holds its deliveries, enabling releases them
    and re-queues failed ones: created since ``since``, or by default those that failed while
    the endpoint was failing (none if it was disabled while healthy, or ``held`` discards)."""
    before = webhook_view(row)
    failing_since = row.failing_since
    for field, value in data.items():
        setattr(row, field, value)
    released = {"sent": 0, "discarded": 0, "recovered": 0}
    if data.get("status") == "active":
        row.consecutive_failures = 0
        row.failing_since = None
        row.disabled_reason = None
    elif data.get("status") == "disabled" and before["status"] != "disabled":
        row.disabled_reason = "disabled through the API"
    row.updated_at = utcnow()
    row.save()
    if data.get("status") == "disabled":
        hold_pending(row.tenant_id, row.id)
    elif data.get("status") == "active":
        released = {**release_held(row, held), "recovered": 0}
        if since is not None:
            released["recovered"] = recover_failed(row, since)
        elif failing_since is not None and held == "send":
            released["recovered"] = recover_outage(row, failing_since)
    if data.get("url", before["url"]) != before["url"] or "auth" in data:
        requeue_refused(row.tenant_id, row.id)  # the SSRF guard may let the new URL through
    record_update("webhook", row.id, before, webhook_view(row), data)
    return released


@blp.route("/webhooks/<webhook_id>/enable", methods=["POST"])
@blp.auth("webhooks:write")
@blp.arguments(WebhookEnableSchema)
@blp.response(200, WebhookEnabledSchema)
@blp.problem(404, "No such webhook")
def enable_webhook(data: dict[str, Any], webhook_id: str) -> dict[str, Any]:
    """Enable a webhook: send (or discard) what was held, re-queue what failed meanwhile."""
    since = data.get("since")
    if since is not None and since > utcnow():
        raise _invalid("since", "is in the future")
    with database.atomic():
        row = get_webhook(webhook_id)
        released = _change(row, {"status": "active"}, data["held"], since)
    return {"webhook": row, **released}


@blp.route("/webhooks/<webhook_id>/recover", methods=["POST"])
@blp.auth("webhooks:write")
@blp.arguments(RecoverSchema)
@blp.response(202, RecoveredSchema)
@blp.problem(404, "No such webhook")
def recover_webhook(data: dict[str, Any], webhook_id: str) -> dict[str, Any]:
    """Re-queue every failed delivery created since `since`, each with a fresh retry budget."""
    if data["since"] > utcnow():
        raise _invalid("since", "is in the future")
    with database.atomic():
        row = get_webhook(webhook_id)
        count = recover_failed(row, data["since"])
        record_audit(
            "webhook.recovered",
            "webhook",
            row.id,
            {"since": data["since"].isoformat() + "Z", "requeued": count},
        )
    return {"requeued": count}


@blp.route("/webhooks/<webhook_id>/test", methods=["POST"])
@blp.auth("webhooks:write")
@blp.response(200, WebhookTestResultSchema)
@blp.problem(404, "No such webhook")
def test_webhook(webhook_id: str) -> dict[str, Any]:
    """Send a signed `webhook.test` event now and report how the endpoint answered."""
    row = get_webhook(webhook_id)
    try:
        check_outbound_url(row.url)
    except UnsafeURL as exc:
        raise _invalid("url", unsafe_url_reason(exc)) from exc
    now = utcnow()
    test_event = Event(type="webhook.test", created_at=now)
    data = {"webhook_id": row.id, "message": "This is a test event from Switchboard."}
    body = event_body("webhook.test", now, data)
    result = send_to_endpoint(row, test_event.id, body)
    logged = IntegrationLog.create(
        tenant_id=row.tenant_id,
        integration_id=row.integration_id,
        event_type="webhook.test",
        event_data={
            "webhook_id": row.id,
            "event_id": test_event.id,
            "status_code": result.status_code,
        },
        status="success" if result.success else "error",
        error_message=result.error,
        response_time_ms=round(result.response_time_ms, 2),
    )
    kinds.log_created(logged.to_dict())
    return {
        "success": result.success,
        "status_code": result.status_code,
        "response_time_ms": round(result.response_time_ms, 2),
        "error_message": result.error,
    }


@blp.route("/webhooks/<webhook_id>/rotate-secret", methods=["POST"])
@blp.auth("webhooks:write")
@blp.response(200, SecretRotatedSchema)
@blp.problem(404, "No such webhook")
def rotate_secret(webhook_id: str) -> dict[str, Any]:
    """Issue a new signing secret; old and new both sign for 24 hours."""
    secret = generate_secret()
    with database.atomic():
        row = get_webhook(webhook_id)
        row.previous_secret = row.secret
        row.previous_secret_until = utcnow() + ROTATION_OVERLAP
        row.secret = encrypt(secret)
        row.updated_at = utcnow()
        row.save()
        record_audit("webhook.secret_rotated", "webhook", row.id, {})
        emit_event(
            "webhook.updated", {**webhook_view(row), "changed": ["secret"]}, tenant_id=row.tenant_id
        )
    return {"secret": secret, "previous_secret_until": row.previous_secret_until}


def _with_attempts(deliveries: list[Delivery]) -> list[Delivery]:
    """Attach each delivery's attempts (one query for the page)."""
    ids = [d.id for d in deliveries]
    by_delivery: dict[str, list[DeliveryAttempt]] = {i: [] for i in ids}
    if ids:
        rows = DeliveryAttempt.of(current_tenant_id()).where(DeliveryAttempt.delivery.in_(ids))
        for attempt in rows.order_by(DeliveryAttempt.attempt):
            by_delivery[attempt.delivery_id].append(attempt)
    for delivery in deliveries:
        delivery.attempt_log = by_delivery[delivery.id]
    return deliveries


@blp.route("/webhooks/<webhook_id>/deliveries", methods=["GET"])
@blp.auth("webhooks:read")
@blp.arguments(DeliveryQueryArgsSchema, location="query")
@blp.response(200, DeliveryPageSchema)
@blp.problem(404, "No such webhook")
def list_deliveries(args: dict[str, Any], webhook_id: str) -> dict[str, Any]:
    """List a webhook's deliveries with every attempt, newest first."""
    get_webhook(webhook_id)
    query = (
        Delivery.of(current_tenant_id(), Delivery, Event)
        .join(Event)
        .where(Delivery.webhook == webhook_id)
    )
    if args.get("status"):
        query = query.where(Delivery.status == args["status"])
    if args.get("event_type"):
        query = query.where(Event.type == args["event_type"])
    if args.get("since"):
        query = query.where(Delivery.created_at >= args["since"])
    if args.get("until"):
        query = query.where(Delivery.created_at < args["until"])
    page = paginate_keyset(query, args, [Delivery.created_at, Delivery.id], "deliveries")
    page["items"] = _with_attempts(page["items"])
    return page


@blp.route("/deliveries/<delivery_id>/retry", methods=["POST"])
@blp.auth("webhooks:write")
@blp.response(202, DeliverySchema)
@blp.problem(404, "No such delivery")
@blp.problem(409, "The delivery is being attempted, or its event was erased")
def retry_delivery(delivery_id: str) -> Delivery:
    """Redeliver now (same webhook-id), whatever the earlier outcome; a fifo webhook's
    delivery goes in its turn (after the one being sent, before later events)."""
    tenant_id = current_tenant_id()
    with database.atomic():
        row = (
            Delivery.of(tenant_id, Delivery, Event)
            .join(Event)
            .where(Delivery.id == delivery_id)
            .first()
        )
        if row is None:
            raise Problem(404, f"No delivery {delivery_id!r}.")
        if row.event.erased_at is not None:
            raise Problem(409, "This delivery's event was erased: there is nothing to send.")
        now = utcnow()
        free = Delivery.lease_until.is_null() | (Delivery.lease_until <= now)
        in_queue = row.webhook_id is not None and row.ordering_key is not None
        updated = (
            Delivery.update_of(
                tenant_id,
                status="queued" if in_queue else "pending",  # a fifo one goes in its turn
                next_attempt_at=now,
                max_attempts=max(row.max_attempts, row.attempts + 1),
                updated_at=now,
            )
            .where((Delivery.id == row.id) & free)
            .execute()
        )
        if not updated:
            raise Problem(409, "This delivery is being attempted right now.")
        if in_queue:
            promote_after_commit(tenant_id, str(row.webhook_id), [row.ordering_key])
        row = Delivery.of(tenant_id, Delivery, Event).join(Event).where(Delivery.id == row.id).get()
        record_audit("delivery.retried", "delivery", row.id, {})
        database.after_commit(wake_dispatcher)
    current_app.logger.info("delivery %s queued for manual retry", row.id)
    return _with_attempts([row])[0]
