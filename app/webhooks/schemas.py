"""Schemas for ``/webhooks`` and deliveries."""

from __future__ import annotations

from typing import Any

import marshmallow as ma

from app.events.filters import DOTTED_PATH
from app.web.api import PageArgsSchema, UTCDateTime, page_schema
from app.web.constraints import HttpUrl
from app.web.keyset import KeysetArgsSchema, keyset_page_schema
from app.webhooks.credentials import (
    AUTH_TYPES,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    REDACTED,
    TOKEN_AUTH_METHODS,
    shown_auth,
    shown_headers,
)
from app.webhooks.sender import MAX_TIMEOUT_MS
from app.webhooks.signing import secret_key

WEBHOOK_STATUSES = ("active", "disabled")
DELIVERY_STATUSES = ("pending", "queued", "held", "succeeded", "failed", "discarded")
HELD_CHOICES = ("send", "discard")
ORDERINGS = ("none", "fifo")
_KEEP = f"omit it (or send `{REDACTED}`) to keep the stored one"


class HeaderSchema(ma.Schema):
    name = ma.fields.String(
        required=True,
        validate=ma.validate.Length(min=1, max=100),
        metadata={
            "description": "Not `webhook-*`, `Host`, `Content-*`, `User-Agent` or hop-by-hop"
        },
    )
    value = ma.fields.String(
        validate=ma.validate.Length(max=MAX_HEADER_VALUE),
        metadata={
            "description": f"Visible ASCII; a secret one reads back as `{REDACTED}`: {_KEEP}"
        },
    )
    secret = ma.fields.Boolean(
        load_default=False,
        metadata={"description": "Encrypt the value at rest and never show it again"},
    )


class AuthSchema(ma.Schema):
    type = ma.fields.String(required=True, validate=ma.validate.OneOf(AUTH_TYPES))
    username = ma.fields.String(
        validate=ma.validate.Length(min=1, max=200), metadata={"description": "basic"}
    )
    password = ma.fields.String(
        validate=ma.validate.Length(min=1, max=1000),
        metadata={"description": f"basic (secret: {_KEEP})"},
    )
    token = ma.fields.String(
        validate=ma.validate.Length(min=1, max=4096),
        metadata={"description": f"bearer (secret: {_KEEP})"},
    )
    token_url = HttpUrl(
        metadata={"description": "oauth2_client_credentials: the token endpoint"},
    )
    client_id = ma.fields.String(
        validate=ma.validate.Length(min=1, max=500),
        metadata={"description": "oauth2_client_credentials"},
    )
    client_secret = ma.fields.String(
        validate=ma.validate.Length(min=1, max=2000),
        metadata={"description": f"oauth2_client_credentials (secret: {_KEEP})"},
    )
    scope = ma.fields.String(
        validate=ma.validate.Length(max=1000),
        metadata={"description": "oauth2_client_credentials: space-separated scopes"},
    )
    audience = ma.fields.String(
        validate=ma.validate.Length(max=1000),
        metadata={"description": "oauth2_client_credentials: sent as `audience` if set"},
    )
    token_auth_method = ma.fields.String(
        validate=ma.validate.OneOf(TOKEN_AUTH_METHODS),
        metadata={"description": "oauth2_client_credentials (default client_secret_basic)"},
    )
    certificate = ma.fields.String(
        validate=ma.validate.Length(max=64 * 1024),
        metadata={"description": "mtls: the client certificate (PEM, chain allowed)"},
    )
    private_key = ma.fields.String(
        validate=ma.validate.Length(max=64 * 1024),
        metadata={"description": f"mtls: its unencrypted PEM key (secret: {_KEEP})"},
    )
    ca_certificate = ma.fields.String(
        validate=ma.validate.Length(max=64 * 1024),
        metadata={"description": "mtls: the receiver's CA (PEM); only it is trusted if set"},
    )
    certificate_expires_at = ma.fields.String(
        dump_only=True, metadata={"description": "mtls: when the client certificate expires"}
    )


def _filter_field(**kwargs: Any) -> ma.fields.Dict:
    return ma.fields.Dict(
        attribute="payload_filter",
        allow_none=True,
        metadata={
            "description": "Deliver only events whose body matches, e.g. "
            '`{"data": {"amount": {"$gte": 100}}}`: plain values must equal, '
            "`$eq $neq $in $nin $gt $gte $lt $lte $exists $and $or $not` compare (see "
            "docs/webhook-features.md); null or `{}` for every event"
        },
        **kwargs,
    )


def _headers_field(**kwargs: Any) -> ma.fields.List:
    return ma.fields.List(
        ma.fields.Nested(HeaderSchema),
        allow_none=True,
        validate=ma.validate.Length(max=MAX_HEADERS),
        metadata={"description": "Extra request headers; secret values are encrypted"},
        **kwargs,
    )


def _auth_field(**kwargs: Any) -> ma.fields.Nested:
    return ma.fields.Nested(
        AuthSchema,
        allow_none=True,
        metadata={
            "description": "How the endpoint authenticates Switchboard: `basic`, `bearer`, "
            "`oauth2_client_credentials` or `mtls` (https only); secrets read back as "
            f"`{REDACTED}`"
        },
        **kwargs,
    )


def _ordering_field(**kwargs: Any) -> ma.fields.String:
    return ma.fields.String(
        validate=ma.validate.OneOf(ORDERINGS),
        metadata={
            "description": "`fifo`: one delivery at a time, in event order (per `ordering_key` "
            "value if set); a delivery that fails for good lets the next one go"
        },
        **kwargs,
    )


def _ordering_key_field(**kwargs: Any) -> ma.fields.String:
    return ma.fields.String(
        allow_none=True,
        validate=ma.validate.Length(min=1, max=200),
        metadata={
            "pattern": DOTTED_PATH,  # checked by parse_path (app.webhooks.resources)
            "description": "With `fifo`: a dotted path in the body (`data.order_id`); "
            "deliveries are ordered per value, different values go in parallel",
        },
        **kwargs,
    )


# A whsec_ secret: base64 (canonical padding) of 24 to 64 bytes, as signing.secret_key checks.
_B64 = "[A-Za-z0-9+/]"
WEBHOOK_SECRET = (
    f"^whsec_(?:(?:{_B64}{{4}}){{8,20}}(?:{_B64}{{2}}==|{_B64}{{3}}=)?"
    f"|(?:{_B64}{{4}}){{21}}(?:{_B64}{{2}}==)?)$"
)


def _url_field(**kwargs: Any) -> HttpUrl:
    return HttpUrl(
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
    # An ordering_key only goes with ordering fifo (checked in app.webhooks.resources too).
    JSON_SCHEMA_EXTRA = {
        "if": {"properties": {"ordering_key": {"type": "string"}}, "required": ["ordering_key"]},
        "then": {"properties": {"ordering": {"const": "fifo"}}, "required": ["ordering"]},
    }

    id = ma.fields.String(dump_only=True)
    url = _url_field(required=True)
    events = _events_field(required=True)
    integration_id = ma.fields.String(required=True, validate=ma.validate.Length(max=40))
    secret = ma.fields.String(
        load_only=True,
        validate=ma.validate.Regexp(
            WEBHOOK_SECRET, error="must be whsec_ and base64 of 24–64 bytes"
        ),
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
    filter = _filter_field(load_default=None)
    headers = _headers_field(load_default=None)
    auth = _auth_field(load_default=None)
    ordering = _ordering_field(load_default="none")
    ordering_key = _ordering_key_field(load_default=None)
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

    @ma.post_dump(pass_original=True)
    def _redact(self, data: dict[str, Any], original: Any, **kwargs: Any) -> dict[str, Any]:
        """Headers and auth as stored hold encrypted secrets: show them redacted."""
        if "headers" in data:
            data["headers"] = shown_headers(original.headers)
        if "auth" in data:
            data["auth"] = shown_auth(original.auth)
        return data


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
    filter = _filter_field()
    headers = _headers_field()
    auth = _auth_field()
    ordering = _ordering_field()
    ordering_key = _ordering_key_field()


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
    erased = ma.fields.Method(
        "_erased",
        metadata={
            "type": "boolean",
            "description": "Its event was erased: outcomes kept, stored answers gone",
        },
    )

    def _event_type(self, obj: Any) -> str:
        return str(obj.event.type)

    def _erased(self, obj: Any) -> bool:
        return obj.event.erased_at is not None


class DeliveryQueryArgsSchema(KeysetArgsSchema):
    status = ma.fields.String(validate=ma.validate.OneOf(DELIVERY_STATUSES))
    event_type = ma.fields.String(
        validate=ma.validate.Length(min=1, max=200),
        metadata={"description": "Only deliveries of events of this type"},
    )
    since = UTCDateTime(metadata={"description": "Only deliveries created at or after this time"})
    until = UTCDateTime(metadata={"description": "Only deliveries created before this time"})


WebhookPageSchema = page_schema(WebhookSchema, "WebhookPage")
DeliveryPageSchema = keyset_page_schema(DeliverySchema, "DeliveryPage")
