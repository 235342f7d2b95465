"""Every metric Switchboard exports, and the one-line hooks the rest of the code calls.

Multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR`` set (before the process starts), each
process — gunicorn workers and RQ workers alike — writes its counters and histograms to files
in that directory, and ``GET /metrics`` on any API process adds them all up. Processes on one
host share the directory; gauges are not kept per process but computed when scraped
(:mod:`app.metrics.exposition`).

Label values come from bounded sets only: route templates (never raw paths), HTTP methods,
status codes, outcomes, connector and action names, and ids of things an admin configures
(API keys, integrations, upstream URLs). Each of the latter is capped by :class:`BoundedLabel`
at :data:`MAX_LABEL_VALUES` distinct values per process; later ones are counted as ``other``.
"""

from __future__ import annotations

import threading
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram

from app.store.models import utcnow

REGISTRY = CollectorRegistry(auto_describe=True)
MAX_LABEL_VALUES = 200
OTHER = "other"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Upstream latency and API latency: 1 ms .. 30 s.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Publish to receipt includes retries: up to a day.
_DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200)


class BoundedLabel:
    """A label whose distinct values are capped per process; the rest become ``other``."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if not value:
            return "none"
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER


_key_label = BoundedLabel()
_integration_label = BoundedLabel()
_upstream_label = BoundedLabel()

HTTP_REQUESTS = Counter(
    "switchboard_http_requests_total",
    "API requests by route template, method and status.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "switchboard_http_request_duration_seconds",
    "Time to the response headers, by route template and method.",
    ["route", "method"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "switchboard_rate_limited_requests_total",
    "Requests refused by a key's rate limit, by API key id.",
    ["key"],
    registry=REGISTRY,
)
DELIVERY_ATTEMPTS = Counter(
    "switchboard_delivery_attempts_total",
    "Delivery attempts by target (webhook|subscription) and outcome "
    "(succeeded|retrying|failed|held).",
    ["target", "outcome"],
    registry=REGISTRY,
)
DELIVERY_ATTEMPT_DURATION = Histogram(
    "switchboard_delivery_attempt_duration_seconds",
    "How long one delivery attempt took (the receiver's answer time).",
    ["target"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "switchboard_delivery_latency_seconds",
    "From the event's publication to its successful receipt, retries included.",
    ["target"],
    buckets=_DELIVERY_BUCKETS,
    registry=REGISTRY,
)
WEBHOOKS_DISABLED = Counter(
    "switchboard_webhooks_auto_disabled_total",
    "Webhooks disabled automatically, by reason (gone|failing).",
    ["reason"],
    registry=REGISTRY,
)
CONNECTOR_ACTIONS = Counter(
    "switchboard_connector_actions_total",
    "Connector action runs by connector, action and outcome (success|error|retryable_error).",
    ["connector", "action", "outcome"],
    registry=REGISTRY,
)
CONNECTOR_ACTION_DURATION = Histogram(
    "switchboard_connector_action_duration_seconds",
    "Connector action run time by connector and action.",
    ["connector", "action"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
GATEWAY_REQUESTS = Counter(
    "switchboard_gateway_requests_total",
    "Gateway requests by integration id, upstream URL and status.",
    ["integration", "upstream", "status"],
    registry=REGISTRY,
)
GATEWAY_UPSTREAM_LATENCY = Histogram(
    "switchboard_gateway_upstream_latency_seconds",
    "Time to the upstream's response headers, by integration id and upstream URL.",
    ["integration", "upstream"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
GATEWAY_EJECTIONS = Counter(
    "switchboard_gateway_ejections_total",
    "Upstreams ejected by passive health checks, by integration id and upstream URL.",
    ["integration", "upstream"],
    registry=REGISTRY,
)
GATEWAY_REFUSED = Counter(
    "switchboard_gateway_refused_total",
    "Gateway requests refused with 503 for capacity, by integration id and reason "
    "(upstream_saturated|in_flight_limit).",
    ["integration", "reason"],
    registry=REGISTRY,
)
OAUTH_REFRESHES = Counter(
    "switchboard_oauth_refreshes_total",
    "OAuth2 token refreshes by outcome (success|failure).",
    ["outcome"],
    registry=REGISTRY,
)
STREAM_PUBLISHED = Counter(
    "switchboard_stream_entries_total",
    "Entries written to the live stream, or dropped because Redis could not take them.",
    ["outcome"],
    registry=REGISTRY,
)
STREAM_CONNECTIONS = Counter(
    "switchboard_stream_connections_total",
    "Live-stream connections opened (phase=opened) and closed (phase=closed, with the reason); "
    "open connections = opened - closed.",
    ["phase", "reason"],
    registry=REGISTRY,
)
INBOUND_REJECTIONS = Counter(
    "switchboard_inbound_rejections_total",
    "Inbound webhook requests rejected, by reason (rejected: the connector refused it, e.g. "
    "a bad signature; address_not_allowed, inactive, replay, unreadable).",
    ["reason"],
    registry=REGISTRY,
)
ALERTS = Counter(
    "switchboard_alerts_total",
    "Alert firings and resolutions by condition type.",
    ["condition", "phase"],
    registry=REGISTRY,
)
ALERT_NOTIFICATIONS = Counter(
    "switchboard_alert_notifications_total",
    "Alert notifications by target type and outcome (sent|retrying|failed).",
    ["target", "outcome"],
    registry=REGISTRY,
)


def http_request(route: str, method: str, status: int, seconds: float) -> None:
    """An API request finished (headers ready)."""
    method = method if method in _METHODS else OTHER
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    HTTP_DURATION.labels(route, method).observe(seconds)


def rate_limited(key_id: str) -> None:
    """A key's request was refused by its rate limit."""
    RATE_LIMITED.labels(_key_label(key_id)).inc()


def delivery_attempted(
    target: str, outcome: str, attempt_ms: float, published_at: datetime | None
) -> None:
    """A delivery attempt was recorded; ``published_at`` (naive UTC) once it succeeded."""
    DELIVERY_ATTEMPTS.labels(target, outcome).inc()
    DELIVERY_ATTEMPT_DURATION.labels(target).observe(attempt_ms / 1000)
    if published_at is not None:
        DELIVERY_LATENCY.labels(target).observe(max(0.0, (utcnow() - published_at).total_seconds()))


def webhook_auto_disabled(gone: bool) -> None:
    """A webhook was disabled automatically (410 Gone, or failing for too long)."""
    WEBHOOKS_DISABLED.labels("gone" if gone else "failing").inc()


def connector_action(connector: str, action: str, outcome: str, seconds: float) -> None:
    """A connector action run ended (``outcome``: success, error or retryable_error)."""
    CONNECTOR_ACTIONS.labels(connector, action, outcome).inc()
    CONNECTOR_ACTION_DURATION.labels(connector, action).observe(seconds)


def gateway_request(
    integration_id: str, upstream: str | None, status: int, upstream_seconds: float | None
) -> None:
    """A gateway request was answered (by the upstream, or with Switchboard's error)."""
    integration, target = _integration_label(integration_id), _upstream_label(upstream)
    GATEWAY_REQUESTS.labels(integration, target, str(status)).inc()
    if upstream_seconds is not None:
        GATEWAY_UPSTREAM_LATENCY.labels(integration, target).observe(upstream_seconds)


def gateway_ejection(integration_id: str, upstream: str) -> None:
    """Passive health checks ejected an upstream."""
    GATEWAY_EJECTIONS.labels(_integration_label(integration_id), _upstream_label(upstream)).inc()


def gateway_refused(integration_id: str, reason: str) -> None:
    """A gateway request was refused for capacity (``upstream_saturated``, ``in_flight_limit``)."""
    GATEWAY_REFUSED.labels(_integration_label(integration_id), reason).inc()


def oauth_refresh(success: bool) -> None:
    """An OAuth2 token refresh ended (the hook for the OAuth2 connections' refresher)."""
    OAUTH_REFRESHES.labels("success" if success else "failure").inc()


def stream_entries(outcome: str, count: int) -> None:
    """Live-stream entries were written (``outcome=published``) or dropped."""
    STREAM_PUBLISHED.labels(outcome).inc(count)


def stream_connection(phase: str, reason: str = "") -> None:
    """A live-stream connection opened, or closed for ``reason``."""
    STREAM_CONNECTIONS.labels(phase, reason).inc()


def inbound_rejection(reason: str) -> None:
    """An inbound webhook request was rejected for ``reason``."""
    INBOUND_REJECTIONS.labels(reason).inc()


def alert(condition: str, phase: str) -> None:
    """An alert fired or resolved."""
    ALERTS.labels(condition, phase).inc()


def alert_notification(target: str, outcome: str) -> None:
    """An alert notification was sent, will be retried, or failed for good."""
    ALERT_NOTIFICATIONS.labels(target, outcome).inc()
