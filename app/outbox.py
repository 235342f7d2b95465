"""Outbox dispatch: waking workers after commit, and reconciling what Redis forgot."""

from __future__ import annotations

import logging

import redis

from app.queues import get_queue
from app.redis_store import get_redis

log = logging.getLogger(__name__)

WAKE_FLAG = "sb:outbox:wake-queued"


def wake_dispatcher() -> None:
    """Enqueue one ``dispatch_due`` job unless one is already waiting (coalesces bursts)."""
    try:
        if get_redis().set(WAKE_FLAG, "1", nx=True, ex=30):
            get_queue("webhooks").enqueue(
                "app.dispatch.dispatch_due", job_timeout=300, result_ttl=0, failure_ttl=3600
            )
    except redis.RedisError as exc:
        # The deliveries are committed; the reconciler will enqueue them when Redis is back.
        log.warning("could not wake the dispatcher (%s); the reconciler will catch up", exc)
