"""Outbox dispatch: waking workers after commit, and reconciling what Redis forgot."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import redis

from app.store.queues import get_queue
from app.store.redis import get_redis

log = logging.getLogger(__name__)

WAKE_FLAG = "sb:outbox:wake-queued"
# Counts every wake-up: a dispatcher busy with slow sends polls it to pick up new work itself
# instead of leaving it to a job queued behind its own.
ANNOUNCED = "sb:outbox:announced"


def wake_dispatcher() -> None:
    """Enqueue one ``dispatch_due`` job unless one is already waiting (coalesces bursts)."""
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.incr(ANNOUNCED)
        pipe.set(WAKE_FLAG, "1", nx=True, ex=30)
        if pipe.execute()[1]:
            get_queue("webhooks").enqueue(
                "app.events.dispatch.dispatch_due",
                description="dispatch_due()",  # explicit: RQ's default would list arguments
                job_timeout=300,
                result_ttl=60,
                failure_ttl=86400,
            )
    except redis.RedisError as exc:
        # The deliveries are committed; the reconciler will enqueue them when Redis is back.
        log.warning("could not wake the dispatcher (%s); the reconciler will catch up", exc)


SCHEDULED_KEY = "sb:outbox:next-wake"


def schedule_wake(when: datetime) -> None:
    """Schedule a dispatcher wake-up at ``when`` (naive UTC) unless an earlier one is pending."""
    try:
        client = get_redis()
        at = when.replace(tzinfo=UTC)
        if at <= datetime.now(UTC):
            wake_dispatcher()
            return
        current = client.get(SCHEDULED_KEY)
        if current is not None and float(current) <= at.timestamp():
            return
        ttl = max(1, int(at.timestamp() - time.time()) + 1)
        client.set(SCHEDULED_KEY, str(at.timestamp()), ex=ttl)
        get_queue("webhooks").enqueue_at(
            at,
            "app.events.outbox.scheduled_wake",
            description="scheduled_wake()",
            job_timeout=60,
            result_ttl=60,
            failure_ttl=86400,
        )
    except redis.RedisError as exc:
        log.warning("could not schedule the next dispatch (%s); the reconciler will", exc)


def scheduled_wake() -> None:
    """RQ job run by the scheduler: clear the marker and wake the dispatcher."""
    get_redis().delete(SCHEDULED_KEY)
    wake_dispatcher()
