"""peewee models: the durable state of Switchboard (see DESIGN.md "Data model")."""

from __future__ import annotations

import json
import secrets
import string
from datetime import UTC, datetime
from typing import Any

import peewee
from playhouse.shortcuts import model_to_dict

from app.store import jsoncodec
from app.store.db import database

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 20) -> str:
    """Return an opaque prefixed id such as ``int_4fPq…``."""
    return f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def utcnow() -> datetime:
    """Naive UTC now: stored timestamps are UTC without tzinfo on every backend."""
    return datetime.now(UTC).replace(tzinfo=None)


class JSONField(peewee.TextField):
    """JSON stored as text: portable between SQLite and PostgreSQL."""

    def db_value(self, value: Any) -> str | None:
        return None if value is None else jsoncodec.dumps(value, separators=(",", ":"))

    def python_value(self, value: str | None) -> Any:
        return None if value is None else json.loads(value)


class BaseModel(peewee.Model):
    class Meta:
        database = database
        legacy_table_names = False

    def to_dict(self) -> dict[str, Any]:
        return model_to_dict(self, recurse=False)


def _id_field(prefix: str) -> peewee.CharField:
    return peewee.CharField(primary_key=True, max_length=40, default=lambda: new_id(prefix))


#: The tenant every installation has: the operator's own, and the home of every row that
#: existed before tenants (migration ``0009_tenants``). It can be neither suspended nor deleted.
DEFAULT_TENANT_ID = "ten_default"
TENANT_STATUSES = ("active", "suspended", "deleting")


class Tenant(BaseModel):
    """An organisation served by this Switchboard; it owns every :class:`TenantOwned` row."""

    id = _id_field("ten")
    name = peewee.CharField(max_length=200)
    external_id = peewee.CharField(unique=True, max_length=200)  # the operator's customer id
    status = peewee.CharField(max_length=20, default="active")  # see TENANT_STATUSES
    quotas = JSONField(default=dict)
    settings = JSONField(default=dict)
    # Days kept per kind of history ({"events": 7, …}) overriding the global retention, within
    # the operator's bounds; a kind not named here keeps the global period.
    retention = JSONField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "tenants"


class _NoTenant:
    """The default of a tenant column: writing it fails, so no row falls into a tenant by
    omission (a migrated SQLite column keeps the default its ``ADD COLUMN`` needed)."""

    def __repr__(self) -> str:
        return "<no tenant>"


NO_TENANT = _NoTenant()


class TenantField(peewee.CharField):
    """The owning tenant's id: required on every write, compared on every scoped query."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_length=40, default=NO_TENANT, **kwargs)

    def db_value(self, value: Any) -> Any:
        if isinstance(value, _NoTenant) or value is None:  # peewee copies defaults: no ``is``
            raise ValueError(f"{self.model.__name__}.tenant_id is required")
        return super().db_value(value)


class TenantOwned(BaseModel):
    """A table whose every row belongs to one tenant.

    Read and write it through the scoped class methods, which all require the tenant: ``of``,
    ``get_of``, ``update_of``, ``delete_of`` (``tests/test_architecture.py`` fails on a plain
    ``select``/``update``/``delete``/``get`` outside the modules it lists as operator-wide).
    A row is created with ``tenant_id`` like any other field, and its own ``save`` and
    ``delete_instance`` act on that row only.
    """

    tenant_id = TenantField()

    @classmethod
    def of(cls, tenant_id: str, *fields: Any) -> Any:
        """``SELECT`` of this tenant's rows."""
        return cls.select(*fields).where(cls.tenant_id == tenant_id)

    @classmethod
    def get_of(cls, tenant_id: str, *conditions: Any) -> Any:
        """The tenant's first row matching ``conditions``, or None."""
        return cls.of(tenant_id).where(*conditions).first()

    @classmethod
    def update_of(cls, tenant_id: str, *args: Any, **changes: Any) -> Any:
        """``UPDATE`` of this tenant's rows (add conditions with ``.where``)."""
        return cls.update(*args, **changes).where(cls.tenant_id == tenant_id)

    @classmethod
    def delete_of(cls, tenant_id: str) -> Any:
        """``DELETE`` of this tenant's rows (add conditions with ``.where``)."""
        return cls.delete().where(cls.tenant_id == tenant_id)


class User(BaseModel):
    """A person; their role in each tenant is a :class:`Membership`."""

    id = _id_field("usr")
    email = peewee.CharField(unique=True, max_length=320)
    password_hash = peewee.CharField(max_length=100)
    # Operators: manage /tenants and act on any tenant (admin there), with platform keys.
    platform_admin = peewee.BooleanField(default=False)
    disabled = peewee.BooleanField(default=False)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "users"


ROLES = ("admin", "member", "readonly")


class Membership(TenantOwned):
    """A user's role in one tenant."""

    id = _id_field("mem")
    user = peewee.ForeignKeyField(User, on_delete="CASCADE", column_name="user_id")
    user_id: str
    role = peewee.CharField(max_length=20)  # see ROLES
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "memberships"
        indexes = ((("user_id", "tenant_id"), True),)


class ApiKey(TenantOwned):
    """A key of one tenant; a ``platform`` key (operators) acts on any tenant it names."""

    id = _id_field("key")
    name = peewee.CharField(max_length=200)
    key_prefix = peewee.CharField(unique=True, max_length=32)
    key_hash = peewee.CharField(max_length=100)
    # During a rotation grace period the previous secret still authenticates.
    previous_key_prefix = peewee.CharField(unique=True, null=True, max_length=32)
    previous_key_hash = peewee.CharField(null=True, max_length=100)
    previous_valid_until = peewee.DateTimeField(null=True)
    permissions = JSONField(default=list)
    rate_limit = peewee.IntegerField(default=1000)
    allowed_ips = JSONField(null=True)
    expires_at = peewee.DateTimeField(null=True)
    last_used_at = peewee.DateTimeField(null=True)
    revoked_at = peewee.DateTimeField(null=True)
    # Not bound to its tenant (its home, where it acts unless it names another).
    platform = peewee.BooleanField(default=False)
    created_at = peewee.DateTimeField(default=utcnow)
    created_by = peewee.ForeignKeyField(
        User, null=True, on_delete="SET NULL", column_name="created_by"
    )
    created_by_id: str | None
    # The plaintext secret, set only on the instance answered at creation or rotation.
    key: str | None = None

    class Meta:
        table_name = "api_keys"
        indexes = ((("tenant_id", "created_at"), False),)


class Integration(TenantOwned):
    id = _id_field("int")
    name = peewee.CharField(max_length=200, index=True)
    type = peewee.CharField(max_length=20, index=True)
    provider = peewee.CharField(max_length=100, index=True)
    status = peewee.CharField(max_length=20, default="inactive", index=True)
    description = peewee.TextField(default="")
    config = JSONField(default=dict)
    metadata = JSONField(default=dict)
    subscriptions = JSONField(default=list)
    allowed_ips = JSONField(null=True)
    created_at = peewee.DateTimeField(default=utcnow, index=True)
    updated_at = peewee.DateTimeField(default=utcnow)
    created_by = peewee.ForeignKeyField(
        User, null=True, on_delete="SET NULL", column_name="created_by"
    )
    created_by_id: str | None

    class Meta:
        table_name = "integrations"
        indexes = ((("tenant_id", "created_at"), False),)


class IntegrationLog(TenantOwned):
    id = peewee.BigAutoField()
    integration_id = peewee.CharField(max_length=40, null=True, index=True)
    event_type = peewee.CharField(max_length=200)
    event_data = JSONField(default=dict)
    status = peewee.CharField(max_length=20)
    error_message = peewee.TextField(null=True)
    response_time_ms = peewee.FloatField(null=True)
    created_at = peewee.DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "integration_logs"
        indexes = (
            (("integration_id", "id"), False),  # one integration's logs, keyset
            (("tenant_id", "id"), False),  # a tenant's logs, keyset
        )


class AuditLog(TenantOwned):
    id = peewee.BigAutoField()
    actor_key_id = peewee.CharField(max_length=40, null=True, index=True)
    actor_user_id = peewee.CharField(max_length=40, null=True, index=True)
    action = peewee.CharField(max_length=100, index=True)
    resource_type = peewee.CharField(max_length=50, index=True)
    resource_id = peewee.CharField(max_length=200, null=True, index=True)
    changes = JSONField(default=dict)
    ip = peewee.CharField(max_length=64, null=True)
    request_id = peewee.CharField(max_length=64, null=True)
    created_at = peewee.DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "audit_log"
        indexes = ((("tenant_id", "id"), False),)


FOUNDATION_MODELS = [User, ApiKey, Integration, IntegrationLog, AuditLog]


class EventType(TenantOwned):
    """A custom event type registered through the API (built-in ones live in code); names are
    unique per tenant."""

    id = _id_field("evt")
    name = peewee.CharField(max_length=200)
    description = peewee.TextField(default="")
    # A JSON Schema (2020-12) that published payloads (``data``) must satisfy (the API's
    # ``schema``), and examples of payloads.
    payload_schema = JSONField(null=True)
    examples = JSONField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "event_types"
        indexes = ((("tenant_id", "name"), True),)


class Webhook(TenantOwned):
    id = _id_field("wh")
    url = peewee.TextField()
    events = JSONField(default=list)
    integration = peewee.ForeignKeyField(
        Integration, on_delete="CASCADE", column_name="integration_id", backref="webhooks"
    )
    integration_id: str
    secret = peewee.TextField()  # encrypted whsec_…
    previous_secret = peewee.TextField(null=True)  # encrypted, signs too until the time below
    previous_secret_until = peewee.DateTimeField(null=True)
    status = peewee.CharField(max_length=20, default="active", index=True)
    disabled_reason = peewee.TextField(null=True)
    retry_count = peewee.IntegerField(default=3)
    timeout_ms = peewee.IntegerField(default=30000)
    rate_limit_per_second = peewee.IntegerField(null=True)
    description = peewee.TextField(default="")
    consecutive_failures = peewee.IntegerField(default=0)
    # First failed attempt with no success since; failing this long disables the webhook.
    failing_since = peewee.DateTimeField(null=True)
    # Which events it receives beyond their type (app.events.filters); ``filter`` is the API's
    # name (a column named so would be an SQL keyword).
    payload_filter = JSONField(null=True)
    # Extra request headers [{name, value, secret}] and endpoint auth {type, …}: secret values
    # encrypted (app.webhooks.credentials).
    headers = JSONField(null=True)
    auth = JSONField(null=True)
    # "fifo": one delivery at a time in event order, per value at ``ordering_key`` if set.
    ordering = peewee.CharField(max_length=20, default="none")
    ordering_key = peewee.CharField(max_length=200, null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "webhooks"
        indexes = ((("tenant_id", "created_at"), False),)


class Event(TenantOwned):
    """The outbox: one row per published event; ``id`` is the receivers' webhook-id."""

    id = _id_field("msg")
    type = peewee.CharField(max_length=200, index=True)
    payload = JSONField(default=dict)
    idempotency_key = peewee.CharField(max_length=300, null=True)  # unique per tenant
    # The API request that published it, so workers log deliveries with the same request id.
    request_id = peewee.CharField(max_length=64, null=True)
    created_at = peewee.DateTimeField(default=utcnow, index=True)
    # Set when the payload was erased (GDPR): the row keeps its id, type and time.
    erased_at = peewee.DateTimeField(null=True)
    #: Not a column: how many deliveries ``emit_event`` queued for this instance (else None).
    delivery_count: int | None = None

    class Meta:
        table_name = "events"
        indexes = (
            (("created_at", "id"), False),
            (("tenant_id", "created_at", "id"), False),  # a tenant's events list, keyset
            (("tenant_id", "idempotency_key"), True),
        )


class Delivery(TenantOwned):
    """One event for one target (a webhook, or an integration's subscription action)."""

    id = _id_field("dlv")
    event = peewee.ForeignKeyField(Event, on_delete="CASCADE", column_name="event_id")
    webhook = peewee.ForeignKeyField(
        Webhook, null=True, on_delete="CASCADE", column_name="webhook_id"
    )
    integration = peewee.ForeignKeyField(
        Integration, null=True, on_delete="CASCADE", column_name="integration_id"
    )
    subscription_index = peewee.IntegerField(null=True)
    event_id: str
    webhook_id: str | None
    integration_id: str | None
    # Attempts attached for API answers (see webhooks.resources), not a column.
    attempt_log: list[DeliveryAttempt]
    # pending | succeeded | failed | held (its webhook is disabled) | discarded (held, dropped)
    # | queued (a fifo webhook's delivery waiting for the one before it, app.events.fifo)
    status = peewee.CharField(max_length=20, default="pending")
    attempts = peewee.IntegerField(default=0)
    max_attempts = peewee.IntegerField(default=4)
    next_attempt_at = peewee.DateTimeField(default=utcnow)
    lease_token = peewee.CharField(max_length=40, null=True, index=True)
    lease_until = peewee.DateTimeField(null=True)
    last_status_code = peewee.IntegerField(null=True)
    last_error = peewee.TextField(null=True)
    # A fifo webhook's deliveries: the queue (the value at the webhook's ``ordering_key``, ""
    # without one) and the position in it, which the database assigns on insert (migration
    # 0011, which also indexes both: an index declared here would break older migrations).
    ordering_key = peewee.CharField(max_length=255, null=True)
    ordering_seq = peewee.BigIntegerField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "deliveries"
        indexes = (
            (("status", "next_attempt_at"), False),
            (("webhook", "created_at", "id"), False),  # a webhook's deliveries, keyset
            (("created_at",), False),  # retention
            (("tenant_id", "created_at"), False),  # erasure, a tenant's history
            (("tenant_id", "status", "next_attempt_at"), False),  # claims for one tenant
        )


class DeliveryAttempt(TenantOwned):
    id = peewee.BigAutoField()
    delivery = peewee.ForeignKeyField(
        Delivery, on_delete="CASCADE", column_name="delivery_id", backref="attempt_rows"
    )
    delivery_id: str
    attempt = peewee.IntegerField()
    status_code = peewee.IntegerField(null=True)
    response_time_ms = peewee.FloatField(null=True)
    error = peewee.TextField(null=True)
    response_body = peewee.TextField(null=True)
    next_attempt_at = peewee.DateTimeField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "delivery_attempts"
        indexes = ((("tenant_id", "id"), False),)


EVENT_MODELS = [EventType, Webhook, Event, Delivery, DeliveryAttempt]


class OAuthToken(TenantOwned):
    """An OAuth2 connection's token set; both tokens encrypted (``secretbox``), never shown.

    Kept apart from the integration's config so that a refresh is a compare-and-swap on
    ``version`` that neither races an admin's config edit nor appears in integration events.
    """

    integration = peewee.ForeignKeyField(
        Integration, primary_key=True, on_delete="CASCADE", column_name="integration_id"
    )
    integration_id: str
    access_token = peewee.TextField()
    refresh_token = peewee.TextField(null=True)
    token_type = peewee.CharField(max_length=40, default="Bearer")
    scope = peewee.TextField(null=True)
    expires_at = peewee.DateTimeField(null=True, index=True)
    version = peewee.IntegerField(default=1)
    connected_at = peewee.DateTimeField(default=utcnow)
    refreshed_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "oauth_tokens"
        indexes = ((("tenant_id", "expires_at"), False),)


class SsoIdentity(TenantOwned):
    """A user's account at an identity provider: ``(issuer, subject)`` signs in as ``user``."""

    id = _id_field("sid")
    user = peewee.ForeignKeyField(User, on_delete="CASCADE", column_name="user_id")
    user_id: str
    integration = peewee.ForeignKeyField(
        Integration, on_delete="CASCADE", column_name="integration_id"
    )
    integration_id: str
    issuer = peewee.CharField(max_length=500)
    subject = peewee.CharField(max_length=255)
    email = peewee.CharField(max_length=320)
    created_at = peewee.DateTimeField(default=utcnow)
    last_login_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "sso_identities"
        indexes = ((("tenant_id", "issuer", "subject"), True),)


class SsoDomain(TenantOwned):
    """An email domain claimed by one tenant's SSO integration: ``/auth/sso/discover`` finds
    the provider by it, and no other tenant can claim it."""

    domain = peewee.CharField(primary_key=True, max_length=253)
    integration = peewee.ForeignKeyField(
        Integration, on_delete="CASCADE", column_name="integration_id"
    )
    integration_id: str
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "sso_domains"


OAUTH_MODELS = [OAuthToken, SsoIdentity]


class AlertRule(TenantOwned):
    """A condition watched by the workers and where to send its alerts."""

    id = _id_field("alr")
    name = peewee.CharField(max_length=200)
    description = peewee.TextField(default="")
    condition = JSONField(default=dict)  # {"type": …, parameters}
    target = JSONField(default=dict)  # {"type": "action"|"webhook", …}
    cooldown_seconds = peewee.IntegerField(default=300)
    notify_resolved = peewee.BooleanField(default=True)
    enabled = peewee.BooleanField(default=True, index=True)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)
    created_by = peewee.ForeignKeyField(
        User, null=True, on_delete="SET NULL", column_name="created_by"
    )
    created_by_id: str | None

    class Meta:
        table_name = "alert_rules"
        indexes = ((("tenant_id", "created_at"), False),)


class AlertFiring(TenantOwned):
    """One incident of a rule for one subject (a webhook, an integration, a key…)."""

    id = _id_field("alf")
    rule = peewee.ForeignKeyField(
        AlertRule, on_delete="CASCADE", column_name="rule_id", backref="firings"
    )
    rule_id: str
    subject = peewee.CharField(max_length=300)
    status = peewee.CharField(max_length=20, default="firing")  # firing | resolved
    # "<rule id>|<subject>" while firing, NULL once resolved: at most one open incident per
    # rule and subject, whichever worker evaluates (NULLs never collide in a unique index).
    open_key = peewee.CharField(max_length=400, null=True, unique=True)
    summary = peewee.TextField(default="")
    details = JSONField(default=dict)
    fired_at = peewee.DateTimeField(default=utcnow)
    resolved_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "alert_firings"
        indexes = (
            (("rule", "subject", "fired_at"), False),
            (("tenant_id", "fired_at"), False),
        )


class AlertNotification(TenantOwned):
    """One notice of a firing (``fired`` or ``resolved``) to the rule's target."""

    id = _id_field("aln")
    firing = peewee.ForeignKeyField(
        AlertFiring, on_delete="CASCADE", column_name="firing_id", backref="notifications"
    )
    firing_id: str
    phase = peewee.CharField(max_length=20)  # fired | resolved
    target_type = peewee.CharField(max_length=20)  # action | webhook
    status = peewee.CharField(max_length=20, default="pending")  # pending | sent | failed
    attempts = peewee.IntegerField(default=0)
    last_error = peewee.TextField(null=True)
    event_id = peewee.CharField(max_length=40, null=True)  # the alert.* event (webhook targets)
    next_attempt_at = peewee.DateTimeField(default=utcnow)
    lease_until = peewee.DateTimeField(null=True)
    sent_at = peewee.DateTimeField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "alert_notifications"
        indexes = (
            (("status", "next_attempt_at"), False),
            (("tenant_id", "created_at"), False),
        )


ALERT_MODELS = [AlertRule, AlertFiring, AlertNotification]


class ConsoleSession(TenantOwned):
    """A browser's session in ``/portal`` (a tenant's, opened by a single-use link) or
    ``/console`` (a signed-in user's); only SHA-256 digests of its link and cookie are kept."""

    id = _id_field("cs")
    kind = peewee.CharField(max_length=20)  # portal | console
    user_id = peewee.CharField(max_length=40, null=True)  # console: who signed in
    created_by_key = peewee.CharField(max_length=40, null=True)  # portal: the key that asked
    read_only = peewee.BooleanField(default=False)
    link_digest = peewee.CharField(max_length=64, null=True, unique=True)
    link_expires_at = peewee.DateTimeField(null=True)
    redeemed_at = peewee.DateTimeField(null=True)
    cookie_digest = peewee.CharField(max_length=64, null=True, unique=True)
    expires_at = peewee.DateTimeField()
    revoked_at = peewee.DateTimeField(null=True)
    return_url = peewee.TextField(null=True)
    theme = JSONField(null=True)  # {logo_url, accent}
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "console_sessions"
        indexes = ((("tenant_id", "created_at"), False),)


CONSOLE_MODELS = [ConsoleSession]

TENANT_MODELS = [Tenant, Membership, SsoDomain]

#: Every tenant-owned table, children before parents (the order erasure deletes them in).
TENANT_OWNED: list[type[TenantOwned]] = [
    DeliveryAttempt,
    Delivery,
    Event,
    AlertNotification,
    AlertFiring,
    AlertRule,
    ConsoleSession,
    OAuthToken,
    SsoIdentity,
    SsoDomain,
    Webhook,
    IntegrationLog,
    AuditLog,
    EventType,
    ApiKey,
    Integration,
    Membership,
]
