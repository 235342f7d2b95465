"""Endpoint health over time, drawn as SVG on the server (no script needed to see a chart).

Success rate and mean latency per endpoint and time bucket come from one grouped SQL query
over the tenant's delivery attempts (scoped by tenant like every other read).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import peewee
from peewee import SQL, fn

from app.console.pages import Seat
from app.store.db import database
from app.store.models import Delivery, DeliveryAttempt, utcnow

WIDTH, HEIGHT, PAD = 320, 90, 4


def _bucket_expression(seconds: int, column: Any = DeliveryAttempt.created_at) -> Any:
    """A row's time bucket: whole ``seconds`` since the epoch of ``column``, in this
    database's SQL."""
    if isinstance(database.obj, peewee.PostgresqlDatabase):
        return fn.FLOOR(fn.date_part("epoch", column) / seconds)
    return fn.strftime("%s", column).cast("INTEGER") / seconds


@dataclass
class Series:
    """One endpoint's buckets: (attempts, successes, mean latency ms) or None when empty."""

    webhook_id: str
    points: list[tuple[int, int, float] | None]

    @property
    def attempts(self) -> int:
        return sum(p[0] for p in self.points if p)

    @property
    def success_rate(self) -> float | None:
        total = self.attempts
        return None if not total else sum(p[1] for p in self.points if p) / total


def health_series(tenant_id: str, span: timedelta, buckets: int = 24) -> dict[str, Series]:
    """Per endpoint of ``tenant_id``: ``buckets`` equal slices of the last ``span``."""
    now = utcnow()
    seconds = max(60, int(span.total_seconds()) // buckets)
    start = now - span
    bucket = _bucket_expression(seconds)
    success = fn.SUM(peewee.Case(None, [((DeliveryAttempt.status_code.between(200, 299)), 1)], 0))
    rows = (
        DeliveryAttempt.of(
            tenant_id,
            Delivery.webhook,
            bucket.alias("bucket"),
            fn.COUNT(DeliveryAttempt.id).alias("attempts"),
            success.alias("successes"),
            fn.AVG(DeliveryAttempt.response_time_ms).alias("latency"),
        )
        .join(Delivery)
        .where(
            (DeliveryAttempt.created_at >= start)
            & Delivery.webhook.is_null(False)
            & (Delivery.tenant_id == tenant_id)
        )
        .group_by(Delivery.webhook, bucket)
        .tuples()
    )
    first = int(start.timestamp()) // seconds if start.tzinfo else _epoch(start) // seconds
    series: dict[str, Series] = {}
    for webhook_id, index, attempts, successes, latency in rows:
        slot = int(index) - first - 1
        entry = series.setdefault(webhook_id, Series(webhook_id, [None] * buckets))
        if 0 <= slot < buckets:
            entry.points[slot] = (int(attempts), int(successes or 0), float(latency or 0.0))
        elif slot == buckets:  # the bucket still filling
            entry.points[-1] = (int(attempts), int(successes or 0), float(latency or 0.0))
    return series


def per_minute(query: Any, column: Any, minutes: int = 60) -> list[float | None]:
    """How many rows of ``query`` (already scoped to a tenant) fall in each of the last
    ``minutes`` minutes by ``column``, oldest first."""
    now = utcnow()
    bucket = _bucket_expression(60, column)
    rows = (
        query.select(bucket.alias("bucket"), fn.COUNT(SQL("*")))
        .where(column >= now - timedelta(minutes=minutes))
        .group_by(bucket)
        .tuples()
    )
    first = _epoch(now) // 60 - minutes + 1
    counts: list[float | None] = [0.0] * minutes
    for index, count in rows:
        slot = int(index) - first
        if 0 <= slot < minutes:
            counts[slot] = float(count)
    return counts


def _epoch(naive_utc: datetime) -> int:
    return int((naive_utc - datetime(1970, 1, 1)).total_seconds())


def bar_chart(
    values: Sequence[float | None], maximum: float, label: str, unit: str
) -> dict[str, Any]:
    """Bars for ``values`` (None: no data, drawn flat) scaled to ``maximum``: what the
    ``charts.html`` macro draws as SVG (the template escapes every text)."""
    step = (WIDTH - 2 * PAD) / max(1, len(values))
    bars = []
    for i, value in enumerate(values):
        h = 1.0 if value is None else max(1.0, (HEIGHT - 2 * PAD) * (value / maximum or 0))
        bars.append(
            {
                "x": round(PAD + i * step, 1),
                "y": round(HEIGHT - PAD - h, 1),
                "width": round(step * 0.8, 1),
                "height": round(h, 1),
                "title": None if value is None else f"{value:.0f}{unit}",
            }
        )
    return {"label": label, "bars": bars, "width": WIDTH, "height": HEIGHT, "base": HEIGHT - PAD}


def endpoint_health(seat: Seat, span: timedelta) -> list[dict[str, Any]]:
    """A chart pair (success rate, latency) for each of the seat's endpoints."""
    endpoints = seat.api("GET", "/webhooks", query={"limit": 100}).body.get("items", [])
    series = health_series(seat.tenant.id, span)
    charts = []
    for endpoint in endpoints:
        data = series.get(endpoint["id"]) or Series(endpoint["id"], [None] * 24)
        rates = [None if p is None else 100.0 * p[1] / p[0] for p in data.points]
        latencies = [None if p is None else p[2] for p in data.points]
        slowest = max((v for v in latencies if v is not None), default=0.0)
        rate = data.success_rate
        charts.append(
            {
                "endpoint": endpoint,
                "attempts": data.attempts,
                "success_rate": None if rate is None else round(100 * rate, 1),
                "slowest_ms": round(slowest),
                "rate_chart": bar_chart(rates, 100.0, "Success rate per time slice", "%"),
                "latency_chart": bar_chart(
                    latencies, slowest or 1.0, "Mean latency per time slice", " ms"
                ),
            }
        )
    return charts
