"""Schemas for ``/webhooks`` and deliveries."""

from __future__ import annotations

from typing import Any

import marshmallow as ma

from app.web.api import PageArgsSchema, UTCDateTime, page_schema
from app.web.keyset import KeysetArgsSchema, keyset_page_schema
from app.webhooks.sender import MAX_TIMEOUT_MS
from app.webhooks.signing import secret_key

WEBHOOK_STATUSES = ("active", "disabled")
DELIVERY_STATUSES = ("pending", "held", "succeeded", "failed", "discarded")
HELD_CHOICES = ("send", "discard")


def _url_field(**kwargs: Any) -> ma.fields.Url:
    return ma.fields.Url(
        schemes={"http", "https"},
        require_tld=False,
        validate=ma.validate.Length(max=2000),
        metadata={"description": "http(s) endpoint; private/loopback addresses are refused"},
        **kwargs,
    )


def _events_field(**kwargs: Any) -> ma.fields.List:
    return ma.fields.List(
        ma.fields.String(validate=ma.validate.Length(min=1, max=200)),
        validate=ma.validate.Length(min=1, max=100),
        metadata={"description": "Event types or wildcards (`*`, `integration.*`)"},
        **kwargs,
    )


class WebhookSchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    url = _url_field(required=True)
    events = _events_field(required=True)
    integration_id = ma.fields.String(required=True, validate=ma.validate.Length(max=40))
    secret = ma.fields.String(
        load_only=True,
        metadata={"description": "Optional `whsec_` secret (base64 of 24–64 bytes)"},
    )
    status = ma.fields.String(dump_only=True)
    disabled_reason = ma.fields.String(dump_only=True, allow_none=True)
    retry_count = ma.fields.Integer(
        strict=True,
        load_default=3,
        validate=ma.validate.Range(min=0, max=20),
        metadata={"description": "Retries after the first attempt (0–20)"},
    )
    timeout_ms = ma.fields.Integer(
        strict=True,
        load_default=30000,
        validate=ma.validate.Range(min=100, max=MAX_TIMEOUT_MS),
        metadata={"description": "Per-attempt timeout in milliseconds (100–60000)"},
    )
    rate_limit_per_second = ma.fields.Integer(
        strict=True,
        allow_none=True,
        load_default=None,
        validate=ma.validate.Range(min=1, max=10000),
        metadata={"description": "Max deliveries per second; extra ones wait, never dropped"},
    )
    description = ma.fields.String(load_default="", validate=ma.validate.Length(max=1000))
    consecutive_failures = ma.fields.Integer(
        dump_only=True, metadata={"description": "Failed attempts since the last success"}
    )
    failing_since = UTCDateTime(
        dump_only=True,
        allow_none=True,
        metadata={
            "description": "First failed attempt with no success since; failing for "
            "SWITCHBOARD_WEBHOOK_DISABLE_AFTER disables the webhook"
        },
    )
    previous_secret_until = UTCDateTime(
        dump_only=True,
        allow_none=True,
        metadata={"description": "Until when the pre-rotation secret also signs"},
    )
    created_at = UTCDateTime(dump_only=True)
    updated_at = UTCDateTime(dump_only=True)

    @ma.validates("secret")
    def _valid_secret(self, value: str, data_key: str) -> None:
        try:
            secret_key(value)
        except ValueError as exc:
            raise ma.ValidationError(str(exc)) from exc


class WebhookCreatedSchema(WebhookSchema):
    secret = ma.fields.String(metadata={"description": "Signing secret: shown only this once"})


class WebhookUpdateSchema(ma.Schema):
    url = _url_field()
    events = _events_field()
    status = ma.fields.String(
        validate=ma.validate.OneOf(WEBHOOK_STATUSES),
        metadata={
            "description": "`disabled` holds deliveries; `active` re-enables a disabled "
            "webhook and sends (or, with `held: discard`, discards) the held ones"
        },
    )
    held = ma.fields.String(
        validate=ma.validate.OneOf(HELD_CHOICES),
        metadata={"description": "With `status: active`: `send` (default) or `discard` held ones"},
    )
    retry_count = ma.fields.Integer(strict=True, validate=ma.validate.Range(min=0, max=20))
    timeout_ms = ma.fields.Integer(
        strict=True, validate=ma.validate.Range(min=100, max=MAX_TIMEOUT_MS)
    )
    rate_limit_per_second = ma.fields.Integer(
        strict=True, allow_none=True, validate=ma.validate.Range(min=1, max=10000)
    )
    description = ma.fields.String(validate=ma.validate.Length(max=1000))


class WebhookEnableSchema(ma.Schema):
    held = ma.fields.String(
        load_default="send",
        validate=ma.validate.OneOf(HELD_CHOICES),
        metadata={"description": "`send` (default) or `discard` the deliveries held meanwhile"},
    )
    since = UTCDateTime(
        metadata={
            "description": "RFC 3339 time: also re-queue failed deliveries created since, as "
            "`recover` does. Default: the deliveries that failed for good while the endpoint "
            "was failing (since its `failing_since`), unless `held` is `discard`"
        },
    )


class WebhookEnabledSchema(ma.Schema):
    webhook = ma.fields.Nested(WebhookSchema)
    sent = ma.fields.Integer(metadata={"description": "Held deliveries queued for sending"})
    discarded = ma.fields.Integer(metadata={"description": "Held deliveries dropped"})
    recovered = ma.fields.Integer(metadata={"description": "Failed deliveries queued again"})


class RecoverSchema(ma.Schema):
    since = UTCDateTime(
        required=True,
        metadata={"description": "RFC 3339 time: failed deliveries created since are re-queued"},
    )


class RecoveredSchema(ma.Schema):
    requeued = ma.fields.Integer(
        metadata={"description": "Failed deliveries queued again (held if the webhook is disabled)"}
    )


class WebhookQueryArgsSchema(PageArgsSchema):
    integration_id = ma.fields.String(validate=ma.validate.Length(max=40))
    status = ma.fields.String(validate=ma.validate.OneOf(WEBHOOK_STATUSES))


class SecretRotatedSchema(ma.Schema):
    secret = ma.fields.String(metadata={"description": "The new secret: shown only this once"})
    previous_secret_until = UTCDateTime(
        metadata={"description": "Both secrets sign until this time"}
    )


class WebhookTestResultSchema(ma.Schema):
    success = ma.fields.Boolean()
    status_code = ma.fields.Integer(allow_none=True)
    response_time_ms = ma.fields.Float()
    error_message = ma.fields.String(allow_none=True)


class AttemptSchema(ma.Schema):
    attempt = ma.fields.Integer()
    status_code = ma.fields.Integer(allow_none=True)
    response_time_ms = ma.fields.Float(allow_none=True)
    error = ma.fields.String(allow_none=True)
    response_body = ma.fields.String(allow_none=True, metadata={"description": "First 4 KiB"})
    next_attempt_at = UTCDateTime(allow_none=True)
    created_at = UTCDateTime()


class DeliverySchema(ma.Schema):
    id = ma.fields.String()
    event_id = ma.fields.String()
    event_type = ma.fields.Method("_event_type")
    webhook_id = ma.fields.String(allow_none=True)
    status = ma.fields.String()
    attempts = ma.fields.Integer()
    max_attempts = ma.fields.Integer()
    next_attempt_at = UTCDateTime(allow_none=True)
    last_status_code = ma.fields.Integer(allow_none=True)
    last_error = ma.fields.String(allow_none=True)
    created_at = UTCDateTime()
    updated_at = UTCDateTime()
    attempt_log = ma.fields.List(ma.fields.Nested(AttemptSchema), data_key="attempt_history")

    def _event_type(self, obj: Any) -> str:
        return str(obj.event.type)


class DeliveryQueryArgsSchema(KeysetArgsSchema):
    status = ma.fields.String(validate=ma.validate.OneOf(DELIVERY_STATUSES))


WebhookPageSchema = page_schema(WebhookSchema, "WebhookPage")
DeliveryPageSchema = keyset_page_schema(DeliverySchema, "DeliveryPage")
