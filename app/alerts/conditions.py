"""Alert conditions: each finds the subjects for which it holds right now.

A condition is ``{"type": …, parameters}``. Evaluating it returns the subjects it currently
holds for (``webhook:wh_…``, ``integration:int_…``, ``key:key_…``…) with a summary and
details; the evaluator opens a firing for a new subject and resolves the firing of a subject
that dropped out. Windowed conditions ("N times in M minutes", an error rate) hold while the
window still contains enough bad outcomes, so they resolve by themselves once it does not.

Sources are durable (the database) or, for rate limits, Redis' per-minute counters; nothing is
read from a process's memory, so any worker evaluates the same. A rule belongs to a tenant and
sees only that tenant's subjects: every condition is evaluated for one ``tenant_id``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import peewee

from app.events.progress import dispatch_progress
from app.limits.usage import rate_limited_keys
from app.store.db import database
from app.store.models import ApiKey, Delivery, Event, Integration, IntegrationLog, Webhook
from app.store.redis import get_redis

MANUAL_DISABLE_REASON = "disabled through the API"  # set by PATCH /webhooks/{id}
MAX_WINDOW = 7 * 86400


@dataclass(frozen=True)
class Holding:
    """A subject a condition holds for."""

    summary: str
    details: dict[str, Any]


Evaluate = Callable[[dict[str, Any], datetime, str], dict[str, Holding]]

_ID = {"type": "string", "maxLength": 40}
_WINDOW = {"type": "integer", "minimum": 60, "maximum": MAX_WINDOW, "default": 300}
_THRESHOLD = {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1}


def _schema(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"type": {"type": "string"}, **properties},
        "required": ["type", *required],
        "additionalProperties": False,
    }


def _window_start(condition: dict[str, Any], now: datetime) -> datetime:
    return now - timedelta(seconds=int(condition.get("window_seconds", 300)))


def webhook_disabled(
    condition: dict[str, Any], now: datetime, tenant_id: str
) -> dict[str, Holding]:
    """Webhooks disabled automatically (410 Gone, or failing), until they are enabled again."""
    query = Webhook.of(tenant_id).where(
        (Webhook.status == "disabled")
        & Webhook.disabled_reason.is_null(False)
        & (Webhook.disabled_reason != MANUAL_DISABLE_REASON)
    )
    if condition.get("webhook_id"):
        query = query.where(Webhook.id == condition["webhook_id"])
    if condition.get("integration_id"):
        query = query.where(Webhook.integration == condition["integration_id"])
    return {
        f"webhook:{hook.id}": Holding(
            f"Webhook {hook.url} was disabled: {hook.disabled_reason}",
            {
                "webhook_id": hook.id,
                "url": hook.url,
                "integration_id": hook.integration_id,
                "reason": hook.disabled_reason,
            },
        )
        for hook in query
    }


def delivery_exhausted(
    condition: dict[str, Any], now: datetime, tenant_id: str
) -> dict[str, Holding]:
    """Deliveries that failed for good (retries used up, or refused) within the window."""
    since = _window_start(condition, now)
    threshold = int(condition.get("threshold", 1))
    query = (
        Delivery.of(tenant_id, Delivery.webhook, Delivery.integration, peewee.fn.COUNT(Delivery.id))
        .where((Delivery.status == "failed") & (Delivery.updated_at >= since))
        .group_by(Delivery.webhook, Delivery.integration)
    )
    if condition.get("webhook_id"):
        query = query.where(Delivery.webhook == condition["webhook_id"])
    if condition.get("integration_id"):
        owned = Webhook.of(tenant_id, Webhook.id).where(
            Webhook.integration == condition["integration_id"]
        )
        query = query.where(
            Delivery.webhook.in_(owned) | (Delivery.integration == condition["integration_id"])
        )
    found = {}
    for webhook_id, integration_id, count in _tuples(query):
        if count < threshold:
            continue
        subject = f"webhook:{webhook_id}" if webhook_id else f"integration:{integration_id}"
        found[subject] = Holding(
            f"{count} deliveries to {subject} failed for good in the last {_minutes(condition)}",
            {"webhook_id": webhook_id, "integration_id": integration_id, "failed": count},
        )
    return found


def integration_test_failed(
    condition: dict[str, Any], now: datetime, tenant_id: str
) -> dict[str, Holding]:
    """Integrations whose last test failed (status ``error``), until a test passes."""
    query = Integration.of(tenant_id).where(Integration.status == "error")
    if condition.get("integration_id"):
        query = query.where(Integration.id == condition["integration_id"])
    return {
        f"integration:{row.id}": Holding(
            f"The test of integration {row.name!r} ({row.provider}) failed",
            {"integration_id": row.id, "name": row.name, "provider": row.provider},
        )
        for row in query
    }


def connector_job_failed(
    condition: dict[str, Any], now: datetime, tenant_id: str
) -> dict[str, Holding]:
    """Connector action runs that failed for good, at least ``threshold`` in the window."""
    since = _window_start(condition, now)
    threshold = int(condition.get("threshold", 3))
    query = (
        IntegrationLog.of(
            tenant_id,
            IntegrationLog.integration_id,
            IntegrationLog.event_type,
            peewee.fn.COUNT(IntegrationLog.id),
        )
        .where(
            IntegrationLog.event_type.startswith("action.")
            & (IntegrationLog.status == "error")
            & (IntegrationLog.created_at >= since)
        )
        .group_by(IntegrationLog.integration_id, IntegrationLog.event_type)
    )
    if condition.get("integration_id"):
        query = query.where(IntegrationLog.integration_id == condition["integration_id"])
    if condition.get("action"):
        query = query.where(IntegrationLog.event_type == f"action.{condition['action']}")
    found = {}
    for integration_id, event_type, count in _tuples(query):
        if count < threshold:
            continue
        action = event_type.removeprefix("action.")
        found[f"integration:{integration_id}:action:{action}"] = Holding(
            f"Action {action} of integration {integration_id} failed {count} times in the last "
            f"{_minutes(condition)}",
            {"integration_id": integration_id, "action": action, "failed": count},
        )
    return found


def error_rate(condition: dict[str, Any], now: datetime, tenant_id: str) -> dict[str, Holding]:
    """An integration's (or one gateway upstream's) share of failed calls above the threshold."""
    since = _window_start(condition, now)
    integration_id = condition["integration_id"]
    counted = (IntegrationLog.status, peewee.fn.COUNT(IntegrationLog.id))
    query = IntegrationLog.of(tenant_id, *counted).where(
        (IntegrationLog.integration_id == integration_id)
        & (IntegrationLog.created_at >= since)
        & (IntegrationLog.status != "pending")
    )
    subject = f"integration:{integration_id}"
    upstream = condition.get("upstream")
    if upstream:
        # Logs store JSON with compact separators, so the upstream appears exactly like this.
        needle = json.dumps({"upstream": upstream}, separators=(",", ":"))[1:-1]
        query = query.where(
            (IntegrationLog.event_type == "gateway.request")
            & json_text_contains(IntegrationLog.event_data, needle)
        )
        subject = f"upstream:{integration_id}:{upstream}"
    counts = dict(_tuples(query.group_by(IntegrationLog.status)))
    total = sum(counts.values())
    errors = counts.get("error", 0)
    if total < int(condition.get("min_requests", 10)) or total == 0:
        return {}
    percent = 100.0 * errors / total
    if percent <= float(condition["threshold_percent"]):
        return {}
    where = f"upstream {upstream} of {integration_id}" if upstream else integration_id
    return {
        subject: Holding(
            f"{percent:.1f}% of {total} calls of {where} failed in the last {_minutes(condition)}",
            {
                "integration_id": integration_id,
                "upstream": upstream,
                "errors": errors,
                "total": total,
                "error_percent": round(percent, 2),
            },
        )
    }


def rate_limited(condition: dict[str, Any], now: datetime, tenant_id: str) -> dict[str, Holding]:
    """The tenant's API keys refused by their rate limit at least ``threshold`` times in the
    window."""
    counts = rate_limited_keys(
        get_redis(), int(condition.get("window_seconds", 300)), now=_unix(now)
    )
    threshold = int(condition.get("threshold", 1))
    if condition.get("key_id"):
        counts = {k: n for k, n in counts.items() if k == condition["key_id"]}
    hot = {k: n for k, n in counts.items() if n >= threshold}
    names: dict[str, str] = (
        dict(_tuples(ApiKey.of(tenant_id, ApiKey.id, ApiKey.name).where(ApiKey.id.in_(list(hot)))))
        if hot
        else {}
    )
    hot = {k: n for k, n in hot.items() if k in names}  # other tenants' keys are not its subjects
    return {
        f"key:{key_id}": Holding(
            f"API key {names.get(key_id, key_id)!r} hit its rate limit {n} times in the last "
            f"{_minutes(condition)}",
            {"key_id": key_id, "name": names.get(key_id), "rate_limited": n},
        )
        for key_id, n in hot.items()
    }


def oauth_refresh_failed(
    condition: dict[str, Any], now: datetime, tenant_id: str
) -> dict[str, Holding]:
    """``oauth.refresh_failed`` events within the window, by integration."""
    since = _window_start(condition, now)
    found: dict[str, Holding] = {}
    events = Event.of(tenant_id, Event.payload).where(
        (Event.type == "oauth.refresh_failed") & (Event.created_at >= since)
    )
    for (payload,) in _tuples(events):
        integration_id = payload.get("integration_id") if isinstance(payload, dict) else None
        if not isinstance(integration_id, str):
            continue
        if condition.get("integration_id") not in (None, integration_id):
            continue
        found[f"integration:{integration_id}"] = Holding(
            f"An OAuth2 token refresh of integration {integration_id} failed",
            {"integration_id": integration_id, "error": payload.get("error")},
        )
    return found


def dispatch_stalled(
    condition: dict[str, Any], now: datetime, tenant_id: str
) -> dict[str, Holding]:
    """The tenant's due deliveries wait unclaimed for ``stall_seconds`` while no dispatcher
    looks for work."""
    after = float(condition.get("stall_seconds", 60))
    seen = dispatch_progress(tenant_id)
    if not seen.stalled(after):
        return {}
    waited = round(seen.oldest_unclaimed_age or 0.0, 1)
    return {
        "dispatch": Holding(
            f"Due deliveries have waited {waited:g} s unclaimed and no dispatcher is claiming",
            {
                "oldest_unclaimed_age": waited,
                "last_claim_age": None
                if seen.last_claim_age is None
                else round(seen.last_claim_age, 1),
            },
        )
    }


def json_text_contains(field: Any, needle: str) -> Any:
    """SQL: the JSON text stored in ``field`` contains ``needle`` exactly (no LIKE wildcards)."""
    find = peewee.fn.instr if isinstance(database.obj, peewee.SqliteDatabase) else peewee.fn.strpos
    return find(field.cast("TEXT"), peewee.Value(needle, converter=False)) > 0


def _tuples(query: Any) -> list[tuple[Any, ...]]:
    return list(query.tuples())


def _minutes(condition: dict[str, Any]) -> str:
    return f"{int(condition.get('window_seconds', 300)) // 60} min"


def _unix(naive_utc: datetime) -> float:
    return naive_utc.replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class ConditionType:
    """A condition's parameters (JSON Schema) and how it is evaluated."""

    description: str
    schema: dict[str, Any]
    evaluate: Evaluate


CONDITIONS: dict[str, ConditionType] = {
    "webhook_disabled": ConditionType(
        "A webhook was disabled automatically; resolves when it is enabled again.",
        _schema({"webhook_id": _ID, "integration_id": _ID}),
        webhook_disabled,
    ),
    "delivery_exhausted": ConditionType(
        "Deliveries failed for good (retries exhausted) at least `threshold` times in the window.",
        _schema(
            {
                "webhook_id": _ID,
                "integration_id": _ID,
                "threshold": _THRESHOLD,
                "window_seconds": _WINDOW,
            }
        ),
        delivery_exhausted,
    ),
    "integration_test_failed": ConditionType(
        "An integration's test failed; resolves when a test passes.",
        _schema({"integration_id": _ID}),
        integration_test_failed,
    ),
    "connector_job_failed": ConditionType(
        "A connector action failed for good at least `threshold` times in the window.",
        _schema(
            {
                "integration_id": _ID,
                "action": {"type": "string", "maxLength": 100},
                "threshold": {**_THRESHOLD, "default": 3},
                "window_seconds": _WINDOW,
            }
        ),
        connector_job_failed,
    ),
    "error_rate": ConditionType(
        "More than `threshold_percent` of an integration's calls (or one gateway upstream's) "
        "failed in the window, over at least `min_requests` calls.",
        _schema(
            {
                "integration_id": _ID,
                "upstream": {"type": "string", "maxLength": 2000},
                "threshold_percent": {"type": "number", "minimum": 0, "maximum": 100},
                "min_requests": {"type": "integer", "minimum": 1, "default": 10},
                "window_seconds": _WINDOW,
            },
            ("integration_id", "threshold_percent"),
        ),
        error_rate,
    ),
    "rate_limited": ConditionType(
        "An API key was refused by its rate limit at least `threshold` times in the window.",
        _schema({"key_id": _ID, "threshold": _THRESHOLD, "window_seconds": _WINDOW}),
        rate_limited,
    ),
    "dispatch_stalled": ConditionType(
        "Due deliveries waited `stall_seconds` unclaimed while no dispatcher looked for work "
        "(workers wedged or every sending thread busy). Notify through an `action` target: a "
        "`webhook` target is delivered by the very dispatchers that stalled.",
        _schema({"stall_seconds": {**_THRESHOLD, "minimum": 10, "maximum": 86400, "default": 60}}),
        dispatch_stalled,
    ),
    "oauth_refresh_failed": ConditionType(
        "An OAuth2 token refresh failed (an `oauth.refresh_failed` event) in the window.",
        _schema({"integration_id": _ID, "window_seconds": {**_WINDOW, "default": 900}}),
        oauth_refresh_failed,
    ),
}


def with_defaults(condition: dict[str, Any]) -> dict[str, Any]:
    """``condition`` with every parameter its type gives a default filled in."""
    spec = CONDITIONS[condition["type"]]
    defaults = {
        name: prop["default"]
        for name, prop in spec.schema["properties"].items()
        if isinstance(prop, dict) and "default" in prop
    }
    return {**defaults, **condition}
