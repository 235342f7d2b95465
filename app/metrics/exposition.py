"""Rendering ``GET /metrics``: the counters of every process, plus gauges read at scrape time.

Gauges that describe shared state — RQ queue depths, due deliveries and the age of the
oldest — are read from Redis and the database when scraped, so any API process answers the
same and no process has to keep them up to date.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import peewee
import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.metrics.instruments import REGISTRY
from app.store.models import Delivery, utcnow
from app.store.queues import QUEUE_NAMES
from app.store.redis import get_redis

log = logging.getLogger(__name__)


class _ThisProcess(Collector):
    """This process's own instruments (when there is no multiprocess directory)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


class SharedStateCollector(Collector):
    """Queue depth and delivery backlog, read from Redis and the database at scrape time."""

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "switchboard_queue_depth", "Jobs waiting in each RQ queue.", labels=["queue"]
        )
        try:
            pipe = get_redis().pipeline(transaction=False)
            for name in QUEUE_NAMES:
                pipe.llen(f"rq:queue:{name}")
            for name, length in zip(QUEUE_NAMES, pipe.execute(), strict=True):
                depth.add_metric([name], length)
            yield depth
        except redis.RedisError as exc:
            log.warning("metrics: queue depth unavailable: %s", exc)
        try:
            now = utcnow()
            due = Delivery.select().where(
                (Delivery.status == "pending") & (Delivery.next_attempt_at <= now)
            )
            count = due.count()
            oldest = due.select(peewee.fn.MIN(Delivery.next_attempt_at)).scalar()
        except peewee.PeeweeException as exc:
            log.warning("metrics: delivery backlog unavailable: %s", exc)
            return
        yield GaugeMetricFamily(
            "switchboard_deliveries_due", "Deliveries due now and not yet attempted.", value=count
        )
        age = (now - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "switchboard_oldest_due_delivery_age_seconds",
            "How long the oldest due delivery has been waiting (0 when none is due).",
            value=max(0.0, age),
        )


def render(multiprocess_dir: str | None, extra: Iterable[Collector] = ()) -> tuple[bytes, str]:
    """The Prometheus text exposition (with the ``extra`` collectors) and its content type."""
    registry = CollectorRegistry()
    if multiprocess_dir:
        MultiProcessCollector(registry, path=multiprocess_dir)
    else:
        registry.register(_ThisProcess())
    registry.register(SharedStateCollector())
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST
