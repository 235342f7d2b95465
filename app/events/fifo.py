"""Ordered delivery: a fifo webhook's deliveries go one at a time, in event order, per queue.

A fifo webhook (``ordering: "fifo"``) files each delivery under a queue: the value at its
``ordering_key`` path (one queue for the whole webhook without one), kept in the delivery's
``ordering_key``, at a position the database assigns on insert (``ordering_seq``, migration
0011). Only a queue's *head* is ``pending`` (or ``held`` while the webhook is disabled); the
deliveries behind it are ``queued``, which no claim ever looks at: a backlog of one queue costs
other endpoints nothing, and one queue never waits for another.

The head leaves the queue when it ends for good — ``succeeded``, ``failed`` (its retries spent:
the next one goes, in order, and the failure stays visible and recoverable), or ``discarded``
— and :func:`promote` makes the next one (the lowest position still queued) the head, in the
same transaction. A delivery sent again (retry, recover, a refused URL fixed) re-enters its
queue as ``queued`` at its original position: it goes after the current head, before anything
published after it. Retries of the head, a worker killed mid-send (its lease lapses and the
head is sent again) and a disabled webhook (its head is ``held``) all keep the order.

Every transaction that changes a queue's head takes its lock first (:func:`lock_queues`,
:func:`lock_webhook`): on PostgreSQL transaction-scoped advisory locks, a shared one per
webhook and an exclusive one per queue (or the webhook's exclusive one for changes across all
its queues), so a publish and the outcome of the head it queues behind are serialized; SQLite
runs one writing transaction at a time (``BEGIN IMMEDIATE``) and needs none.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import peewee

from app.store.db import database
from app.store.models import Delivery, Webhook, utcnow

#: Statuses of a queue's head (at most one per queue) and of what waits behind it.
HEAD = ("pending", "held")
UNFINISHED = (*HEAD, "queued")
Queue = tuple[str, str]  # (webhook id, ordering key)


def _lock_id(*parts: str) -> int:
    """A signed 64-bit advisory lock id for ``parts``."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _postgres() -> bool:
    return isinstance(database.obj, peewee.PostgresqlDatabase)


def lock_queues(queues: Iterable[Queue]) -> None:
    """Hold the locks of ``queues`` until this transaction ends (see the module doc)."""
    wanted = sorted(set(queues))
    if not wanted or not _postgres():
        return
    shared = sorted({_lock_id("webhook", webhook_id) for webhook_id, _ in wanted})
    exclusive = sorted({_lock_id("queue", webhook_id, key) for webhook_id, key in wanted})
    database.execute_sql(
        "SELECT pg_advisory_xact_lock_shared(k) FROM unnest(%s::bigint[]) WITH ORDINALITY"
        " AS t(k, n) ORDER BY n",
        (shared,),
    )
    database.execute_sql(
        "SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) WITH ORDINALITY"
        " AS t(k, n) ORDER BY n",
        (exclusive,),
    )


def lock_webhook(webhook_id: str) -> None:
    """Hold every queue of the webhook until this transaction ends."""
    if _postgres():
        database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_lock_id("webhook", webhook_id),))


def occupied(tenant_id: str, queues: Iterable[Queue]) -> set[Queue]:
    """Which of ``queues`` hold an unfinished delivery (a new one queues behind it)."""
    wanted = list(set(queues))
    found: set[Queue] = set()
    for chunk in peewee.chunked(wanted, 200):
        rows = (
            Delivery.of(tenant_id, Delivery.webhook, Delivery.ordering_key)
            .where(
                peewee.Tuple(Delivery.webhook, Delivery.ordering_key).in_(chunk)
                & Delivery.status.in_(UNFINISHED)
            )
            .distinct()
        )
        found.update((row.webhook_id, row.ordering_key) for row in rows)
    return found


def promote(tenant_id: str, webhook_id: str, keys: Iterable[str] | None = None) -> int:
    """Make the next delivery of each of the webhook's queues (``keys``, or all) its head
    where the queue has none: ``pending``, due now (``held`` if the webhook is disabled).
    Call with the queues locked; returns how many became heads."""
    webhook = Webhook.get_of(tenant_id, Webhook.id == webhook_id)
    if webhook is None:
        return 0
    wanted = None if keys is None else sorted(set(keys))
    if wanted is not None and not wanted:
        return 0

    def queued_or_headed(*fields: Any) -> Any:
        query = Delivery.of(tenant_id, *fields).where(
            (Delivery.webhook == webhook_id) & Delivery.ordering_key.is_null(False)
        )
        return query if wanted is None else query.where(Delivery.ordering_key.in_(wanted))

    headed = queued_or_headed(Delivery.ordering_key).where(Delivery.status.in_(HEAD))
    firsts = (
        queued_or_headed(Delivery.ordering_key, peewee.fn.MIN(Delivery.ordering_seq))
        .where((Delivery.status == "queued") & Delivery.ordering_key.not_in(headed))
        .group_by(Delivery.ordering_key)
    )
    now = utcnow()
    status = "pending" if webhook.status == "active" else "held"
    return int(
        Delivery.update_of(tenant_id, status=status, next_attempt_at=now, updated_at=now)
        .where(
            (Delivery.webhook == webhook_id)
            & (Delivery.status == "queued")
            & peewee.Tuple(Delivery.ordering_key, Delivery.ordering_seq).in_(firsts)
        )
        .execute()
    )


def promote_after(rows: Iterable[Any]) -> int:
    """Promote the queues of deliveries that just left them (anything with ``tenant_id``,
    ``webhook_id`` and ``ordering_key``; those without a queue are skipped)."""
    by_webhook: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        if row.webhook_id and row.ordering_key is not None:
            by_webhook[(row.tenant_id, row.webhook_id)].add(row.ordering_key)
    return sum(promote(t, w, keys) for (t, w), keys in sorted(by_webhook.items()))


def queues_of(rows: Iterable[Any]) -> list[Queue]:
    """The queues ``rows`` (deliveries) belong to."""
    return [
        (row.webhook_id, row.ordering_key)
        for row in rows
        if row.webhook_id and row.ordering_key is not None
    ]
