"""Ordered delivery: a fifo webhook's deliveries go one at a time, in event order, per queue.

A fifo webhook (``ordering: "fifo"``) files each delivery under a queue: the value at its
``ordering_key`` path (one queue for the whole webhook without one), kept in the delivery's
``ordering_key``, at a position the database assigns on insert (``ordering_seq``, migration
0011: commit order, whatever the API processes' clocks). Only a queue's *head* is ``pending``
(or ``held`` while the webhook is disabled); the deliveries behind it are ``queued``, which no
claim ever looks at: a backlog of one queue costs other endpoints nothing, and one queue never
waits for another.

The head leaves its queue when it ends for good — ``succeeded``, ``failed`` (its retries
spent: the next one goes, and the failure stays visible and recoverable) or ``discarded`` —
and :func:`promote` makes the queued delivery with the lowest position the new head. Every
delivery enters a queue as ``queued`` — a new one, or one sent again (retry, recover, a
refused URL fixed, a held one released), at its original position — and is promoted once that
change has committed (:func:`promote_after_commit`), or by the transaction that ends the head
before it. Retries of the head, a worker killed mid-send (the head's lease lapses and it is
sent again) and a disabled webhook (its head is held) all keep the order.

Promotion is serialized per queue: on PostgreSQL by transaction-scoped advisory locks (a
shared one per webhook with an exclusive one per queue, or the webhook's exclusive one for all
its queues), always taken first in the transaction, before any row, so they never deadlock
with row locks; SQLite runs one writing transaction at a time (``BEGIN IMMEDIATE``). A
promotion lost with a process that died right after its commit is done by the reconciler
(``app.events.reconciler``: a queue whose deliveries waited ``SAFETY_NET_SECONDS`` with no
head).
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import peewee

from app.events.outbox import wake_dispatcher
from app.store.db import database
from app.store.models import Delivery, Webhook, utcnow
from app.store.outage import WORKER_SURVIVES, describe

log = logging.getLogger(__name__)

#: Statuses of a queue's head (at most one per queue).
HEAD = ("pending", "held")
Queue = tuple[str, str]  # (webhook id, ordering key)
#: A queue with deliveries waiting this long and no head is promoted by the reconciler.
SAFETY_NET_SECONDS = 30


def _lock_id(*parts: str) -> int:
    """A signed 64-bit advisory lock id for ``parts``."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _postgres() -> bool:
    return isinstance(database.obj, peewee.PostgresqlDatabase)


def lock_queues(queues: Iterable[Queue]) -> None:
    """Hold the locks of ``queues`` until this transaction ends; call before touching rows."""
    wanted = set(queues)
    if not wanted or not _postgres():
        return
    shared = sorted({_lock_id("webhook", w) for w, _ in wanted})
    exclusive = sorted({_lock_id("queue", w, key) for w, key in wanted})
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
    """Hold every queue of the webhook until this transaction ends; call before any row."""
    if _postgres():
        database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_lock_id("webhook", webhook_id),))


def queues_of(rows: Iterable[Any]) -> list[Queue]:
    """The queues ``rows`` (deliveries) belong to."""
    return [
        (row.webhook_id, row.ordering_key)
        for row in rows
        if row.webhook_id and row.ordering_key is not None
    ]


def promote(tenant_id: str, webhook_id: str, keys: Iterable[str] | None = None) -> int:
    """Make the next delivery of each of the webhook's queues (``keys``, or all) its head
    where the queue has none: ``pending`` and due now, or ``held`` if the webhook is disabled.
    Call with those queues locked; returns how many became heads."""
    wanted = None if keys is None else sorted(set(keys))
    webhook = Webhook.get_of(tenant_id, Webhook.id == webhook_id)
    if webhook is None or wanted == []:
        return 0

    def queues(*fields: Any) -> Any:
        query = Delivery.of(tenant_id, *fields).where(
            (Delivery.webhook == webhook_id) & Delivery.ordering_key.is_null(False)
        )
        return query if wanted is None else query.where(Delivery.ordering_key.in_(wanted))

    headed = queues(Delivery.ordering_key).where(Delivery.status.in_(HEAD))
    firsts = (
        queues(Delivery.ordering_key, peewee.fn.MIN(Delivery.ordering_seq))
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


def promote_ended(rows: Iterable[Any]) -> int:
    """Promote the queues of deliveries (with ``tenant_id``, ``webhook_id`` and
    ``ordering_key``) whose head just ended, in this transaction (their queues locked)."""
    by_webhook: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        if row.webhook_id and row.ordering_key is not None:
            by_webhook[(row.tenant_id, row.webhook_id)].add(row.ordering_key)
    return sum(promote(t, w, keys) for (t, w), keys in sorted(by_webhook.items()))


def promote_now(tenant_id: str, webhook_id: str, keys: Iterable[str] | None = None) -> int:
    """Promote in a transaction of its own (locks first) and wake the dispatcher for the new
    heads; a store error is logged, not raised (the reconciler's safety net catches up)."""
    wanted = None if keys is None else sorted(set(keys))
    try:
        with database.atomic():
            if wanted is None:
                lock_webhook(webhook_id)
            else:
                lock_queues((webhook_id, key) for key in wanted)
            promoted = promote(tenant_id, webhook_id, wanted)
    except WORKER_SURVIVES as exc:
        log.warning("fifo promotion of %s postponed: %s", webhook_id, describe(exc))
        return 0
    if promoted:
        wake_dispatcher(tenant_id)
    return promoted


def promote_after_commit(
    tenant_id: str, webhook_id: str, keys: Iterable[str] | None = None
) -> None:
    """Promote the webhook's queues (``keys``, or all) once this transaction has committed:
    deliveries it made ``queued`` become heads where their queue has none."""
    wanted = None if keys is None else sorted(set(keys))
    database.after_commit(lambda: promote_now(tenant_id, webhook_id, wanted))
