"""The outbox reconciler: a worker thread that makes sure due deliveries get dispatched.

Deliveries live in the database; Redis only carries wake-ups. After Redis is flushed or
restarted, or a worker dies mid-delivery (its lease expires), the reconciler notices due
deliveries that nobody holds and wakes the dispatcher again. Every worker runs one; a short
Redis lock keeps them from doing the same pass twice.
"""

from __future__ import annotations

import logging
import threading

from flask import Flask

from app.events.outbox import WAKE_FLAG, wake_dispatcher
from app.events.progress import unclaimed_filter
from app.store.db import database
from app.store.models import Delivery, utcnow
from app.store.outage import WORKER_SURVIVES, describe
from app.store.redis import get_redis

log = logging.getLogger(__name__)

LOCK_KEY = "sb:outbox:reconcile-lock"


def reconcile_once() -> int:
    """Wake the dispatcher if due, unleased deliveries exist; return how many are due."""
    with database.connection_context():
        due = Delivery.select().where(unclaimed_filter(utcnow())).count()
    if due:
        # A stale flag from a job lost with Redis must not block the wake-up.
        get_redis().delete(WAKE_FLAG)
        wake_dispatcher()
    return due


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
