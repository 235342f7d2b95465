"""The outbox reconciler: a worker thread that makes sure due deliveries get dispatched.

Deliveries live in the database; Redis only carries wake-ups. After Redis is flushed or
restarted, or a worker dies mid-delivery (its lease expires), the reconciler notices due
deliveries that nobody holds and wakes the dispatcher again. It is also the safety net of
ordered delivery: a fifo queue whose deliveries have waited ``fifo.SAFETY_NET_SECONDS`` with
no head (its promotion was lost with a process that died right after committing) gets one.
Every worker runs one; a short Redis lock keeps them from doing the same pass twice.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import peewee
from flask import Flask

from app.events import fifo
from app.events.outbox import WAKE_FLAG, wake_dispatcher
from app.events.progress import unclaimed_filter
from app.store.db import database
from app.store.models import Delivery, utcnow
from app.store.outage import WORKER_SURVIVES, describe
from app.store.redis import get_redis

log = logging.getLogger(__name__)

LOCK_KEY = "sb:outbox:reconcile-lock"
_safety_net_at = 0.0  # time.monotonic() of this process's next look for headless fifo queues


def reconcile_once() -> int:
    """Wake the dispatcher if due, unleased deliveries exist (and give stalled fifo queues
    their head); return how many are due."""
    global _safety_net_at  # noqa: PLW0603 - one schedule per process
    with database.connection_context():
        if time.monotonic() >= _safety_net_at:  # it reads every queued delivery: not often
            _safety_net_at = time.monotonic() + fifo.SAFETY_NET_SECONDS
            promote_stalled_queues()
        due = Delivery.select().where(unclaimed_filter(utcnow())).count()
    if due:
        # A stale flag from a job lost with Redis must not block the wake-up.
        get_redis().delete(WAKE_FLAG)
        wake_dispatcher()
    return due


def promote_stalled_queues() -> int:
    """Give every fifo queue stalled without a head (``headless_queues``) its head."""
    return sum(fifo.promote_now(t, w, [key]) for t, w, key in headless_queues())


def headless_queues(limit: int = 100) -> list[tuple[str, str, str]]:
    """(tenant, webhook, key) of fifo queues whose deliveries have waited
    ``fifo.SAFETY_NET_SECONDS`` with none at their head. Operator-wide: every tenant's."""
    head = Delivery.alias()
    has_head = head.select(peewee.SQL("1")).where(
        (head.webhook == Delivery.webhook)
        & (head.ordering_key == Delivery.ordering_key)
        & head.status.in_(fifo.HEAD)
    )
    stalled = utcnow() - timedelta(seconds=fifo.SAFETY_NET_SECONDS)
    rows = (
        Delivery.select(Delivery.tenant_id, Delivery.webhook, Delivery.ordering_key)
        .where(
            (Delivery.status == "queued")
            & Delivery.ordering_key.is_null(False)
            & (Delivery.updated_at < stalled)
            & ~peewee.fn.EXISTS(has_head)
        )
        .distinct()
        .limit(limit)
    )
    return [(str(row.tenant_id), str(row.webhook_id), str(row.ordering_key)) for row in rows]


def start_reconciler(app: Flask) -> threading.Thread:
    """Run ``reconcile_once`` every ``RECONCILE_INTERVAL`` seconds in a daemon thread."""
    interval = max(1, int(app.config["RECONCILE_INTERVAL"]))

    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(interval):
            with app.app_context():
                try:
                    if get_redis().set(LOCK_KEY, "1", nx=True, px=int(interval * 800)):
                        due = reconcile_once()
                        if due:
                            log.info("reconciler: %d due deliveries, dispatcher woken", due)
                except WORKER_SURVIVES as exc:
                    log.warning("reconciler pass failed: %s", describe(exc))
                except Exception as exc:  # noqa: BLE001 - keep looping
                    log.warning("reconciler pass failed: %s", exc)

    thread = threading.Thread(target=loop, name="outbox-reconciler", daemon=True)
    thread.start()
    return thread
