"""Outbox dispatch: waking workers after commit, and reconciling what Redis forgot."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import redis
from flask import current_app

from app.store.queues import get_queue
from app.store.redis import get_redis
from app.webhooks.sender import MAX_TIMEOUT_MS

log = logging.getLogger(__name__)

WAKE_FLAG = "sb:outbox:wake-queued"
# Counts every wake-up: a dispatcher busy with slow sends polls it to pick up new work itself
# instead of leaving it to a job queued behind its own.
ANNOUNCED = "sb:outbox:announced"
# Every wake-up is also published here: a running dispatcher waiting for its sends to end
# looks at once instead of at its next poll (app.events.dispatch listens).
NUDGE_CHANNEL = "sb:outbox:nudge"
# Tenants with new deliveries, by when they were announced: a busy dispatcher claims for them.
FRESH = "sb:outbox:fresh-tenants"
FRESH_SECONDS = 60


def fresh_tenants(since: float) -> tuple[list[str], float]:
    """Tenants announced after ``since`` (a Unix time), and the newest announcement's time."""
    found = cast(
        list[tuple[bytes, float]],
        get_redis().zrangebyscore(FRESH, f"({since!r}", "+inf", withscores=True),
    )
    names = [name.decode() if isinstance(name, bytes) else str(name) for name, _ in found]
    return names, max((float(score) for _, score in found), default=since)


# A send may run this long past its own timeout (which bounds each socket read, not the whole
# answer: a peer dripping bytes could hold it for ever) before it counts as failed.
SEND_GRACE = 1.0
# Time a dispatcher job may spend recording its last outcomes after its sends ended.
RECORD_MARGIN = 30


def dispatch_job_timeout(config: Mapping[str, Any]) -> int:
    """RQ's hard limit for one dispatcher job, derived so that it is never reached.

    A job claims for ``DISPATCH_JOB_SECONDS``, then finishes the sends it has in flight, each
    bounded by the longest timeout a target may have (a webhook's ``timeout_ms`` or the
    connector timeout) plus ``SEND_GRACE``, then records them.
    """
    longest_send = max(MAX_TIMEOUT_MS / 1000, float(config["CONNECTOR_TIMEOUT"])) + SEND_GRACE
    return math.ceil(float(config["DISPATCH_JOB_SECONDS"]) + longest_send + RECORD_MARGIN)


def wake_dispatcher(tenant_id: str | None = None) -> None:
    """Enqueue one ``dispatch_due`` job unless one is already waiting (coalesces bursts).

    With ``tenant_id`` (new deliveries of one tenant, e.g. a publish), a dispatcher already
    running claims that tenant's work by itself, without scanning past other tenants' backlogs.
    """
    try:
        pipe = get_redis().pipeline(transaction=False)
        if tenant_id is not None:
            pipe.zadd(FRESH, {tenant_id: time.time()})
            pipe.expire(FRESH, FRESH_SECONDS)
        pipe.incr(ANNOUNCED)
        pipe.publish(NUDGE_CHANNEL, b"")
        pipe.set(WAKE_FLAG, "1", nx=True, ex=30)
        if pipe.execute()[-1]:
            get_queue("webhooks").enqueue(
                "app.events.dispatch.dispatch_due",
                description="dispatch_due()",  # explicit: RQ's default would list arguments
                job_timeout=dispatch_job_timeout(current_app.config),
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
