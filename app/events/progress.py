"""Dispatcher progress: is due work being claimed? The signal behind ``/ready``'s dispatch check.

Every dispatcher job, while it claims, looks for due work at least once a second; each look
that reaches the database stamps :data:`LAST_CLAIM_KEY` in Redis (at most once a second per
process). Delivery is **stalled** when a due delivery nobody holds has waited longer than
``SWITCHBOARD_DISPATCH_STALL_AFTER`` and no dispatcher has looked for work for as long: workers
may heartbeat, but none is claiming (every sending thread busy, or a dispatcher wedged).
A webhook held back by its in-flight cap or its rate limit does not count: dispatchers still
look every second, they only skip it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import peewee
import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.store.models import Delivery, Tenant, utcnow
from app.store.redis import get_redis

log = logging.getLogger(__name__)

LAST_CLAIM_KEY = "sb:dispatch:last-claim"
_STAMP_EVERY = 1.0  # seconds between two stamps of one process

_stamped = 0.0
_stamp_lock = threading.Lock()


def claim_pass() -> None:
    """Record that a dispatcher looked for due work now (throttled; Redis errors ignored)."""
    global _stamped  # noqa: PLW0603 - one stamp time per process
    now = time.monotonic()
    with _stamp_lock:
        if now - _stamped < _STAMP_EVERY:
            return
        _stamped = now
    try:
        get_redis().set(LAST_CLAIM_KEY, repr(time.time()))
    except redis.RedisError:  # the stall check reads "unknown", which only the age can turn red
        pass


def last_claim_age() -> float | None:
    """Seconds since a dispatcher last looked for due work; None if none did (or Redis forgot)."""
    raw = get_redis().get(LAST_CLAIM_KEY)
    return None if raw is None else max(0.0, time.time() - float(raw))


def paused_tenants() -> Any:
    """Tenants whose deliveries wait, not due to anyone: suspended, or being erased (a query:
    every claim reads it afresh, so a suspension holds from the moment it is committed)."""
    return Tenant.select(Tenant.id).where(Tenant.status != "active")


def claimable() -> Any:
    """Pending deliveries of tenants that are not paused."""
    return (Delivery.status == "pending") & Delivery.tenant_id.not_in(paused_tenants())


def unclaimed_filter(now: datetime) -> Any:
    """Due, pending deliveries that no dispatcher holds (never leased, or the lease lapsed), of
    tenants whose deliveries go (a suspended tenant's wait for it to be resumed)."""
    free = Delivery.lease_until.is_null() | (Delivery.lease_until < now)
    return claimable() & (Delivery.next_attempt_at <= now) & free


def oldest_unclaimed_age(tenant_id: str | None = None) -> float | None:
    """Seconds the oldest due delivery nobody holds has waited (of every tenant, or of
    ``tenant_id``), or None when there is none."""
    now = utcnow()
    query = (
        Delivery.of(tenant_id, Delivery.next_attempt_at)
        if tenant_id is not None
        else Delivery.select(Delivery.next_attempt_at)  # the operator's view: every tenant
    )
    oldest = query.where(unclaimed_filter(now)).order_by(Delivery.next_attempt_at).first()
    return None if oldest is None else max(0.0, (now - oldest.next_attempt_at).total_seconds())


@dataclass(frozen=True)
class DispatchProgress:
    """What ``/ready``, ``/metrics`` and the ``dispatch_stalled`` alert condition report."""

    last_claim_age: float | None
    oldest_unclaimed_age: float | None

    def stalled(self, after: float) -> bool:
        """Due work has waited ``after`` seconds and no dispatcher looked for that long."""
        waiting = self.oldest_unclaimed_age is not None and self.oldest_unclaimed_age > after
        idle = self.last_claim_age is None or self.last_claim_age > after
        return waiting and idle


def dispatch_progress(tenant_id: str | None = None) -> DispatchProgress:
    """Read the progress signal, for every tenant or one (one Redis GET, one indexed query).
    Raises store errors."""
    return DispatchProgress(last_claim_age(), oldest_unclaimed_age(tenant_id))


class DispatchProgressCollector(Collector):
    """The progress signal as gauges, read at scrape time (any API process answers the same)."""

    def collect(self) -> Iterator[Metric]:
        try:
            seen = dispatch_progress()
        except (redis.RedisError, peewee.PeeweeException) as exc:
            log.warning("metrics: dispatch progress unavailable: %s", exc)
            return
        if seen.last_claim_age is not None:
            yield GaugeMetricFamily(
                "switchboard_dispatch_last_claim_age_seconds",
                "Seconds since a dispatcher last looked for due deliveries.",
                value=seen.last_claim_age,
            )
        yield GaugeMetricFamily(
            "switchboard_oldest_unclaimed_delivery_age_seconds",
            "How long the oldest due delivery that no worker holds has waited (0 when none).",
            value=seen.oldest_unclaimed_age or 0.0,
        )
