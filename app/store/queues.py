"""RQ queues: ``webhooks``, ``connectors`` and ``default`` on the app's Redis."""

from __future__ import annotations

from rq import Queue

from app.store.redis import get_redis

QUEUE_NAMES = ("webhooks", "connectors", "default")


def get_queue(name: str) -> Queue:
    """The RQ queue ``name`` bound to the app's Redis connection."""
    if name not in QUEUE_NAMES:
        raise ValueError(f"unknown queue {name!r}")
    return Queue(name, connection=get_redis())
