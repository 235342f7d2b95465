"""The outbox dispatcher job: claim due deliveries, perform them concurrently, record outcomes.

One RQ job drains many deliveries: it claims a batch with a lease (so no other worker takes
them), sends them in a thread pool, then records every attempt in one transaction. A worker
that dies mid-batch leaves leases that expire; the reconciler then wakes a dispatcher again,
so every delivery is attempted at least once more — nothing is lost, only possibly repeated.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import peewee
from flask import current_app

from app.events import observe
from app.events.held import hold_pending
from app.events.outbox import WAKE_FLAG, schedule_wake, wake_dispatcher
from app.store.db import database
from app.store.models import (
    Delivery,
    DeliveryAttempt,
    Event,
    IntegrationLog,
    Webhook,
    new_id,
    utcnow,
)
from app.store.redis import get_redis
from app.webhooks.backoff import retry_delay
from app.webhooks.sender import SendResult, event_body, send_signed, signing_secrets

log = logging.getLogger(__name__)

# One batch is sent in a single parallel round, so a lease only has to outlive one timeout.
SEND_THREADS = 32
BATCH_SIZE = SEND_THREADS
MAX_JOB_SECONDS = 60
MAX_RETRY_DELAY = 24 * 3600  # a hostile Retry-After must not overflow datetime arithmetic


@dataclass
class Claimed:
    delivery: Delivery
    event: Event
    webhook: Webhook | None


def dispatch_due() -> int:
    """RQ job: perform due deliveries until none are left (or a minute passed); return count."""
    get_redis().delete(WAKE_FLAG)  # publishes from now on wake another job
    done = 0
    deadline = time.monotonic() + MAX_JOB_SECONDS
    with database.connection_context():
        while time.monotonic() < deadline:
            batch = claim_due(BATCH_SIZE)
            if not batch:
                break
            batch = _admit_rate_limited(batch)
            if not batch:
                continue
            results = _perform_all(batch)
            record_outcomes(batch, results)
            done += len(batch)
        else:
            wake_dispatcher()  # time's up with work left: let another job continue
        _schedule_next_wake()
    return done


def _lease_seconds() -> float:
    """Longest time one parallel round can take, plus a margin."""
    longest_ms = Webhook.select(peewee.fn.MAX(Webhook.timeout_ms)).scalar() or 0
    longest = max(longest_ms / 1000, float(current_app.config["CONNECTOR_TIMEOUT"]))
    return longest + float(current_app.config["DELIVERY_LEASE_MARGIN"])


def claim_due(limit: int) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries to this job and load what sending them needs."""
    now = utcnow()
    token = new_id("lease", 16)
    free = Delivery.lease_until.is_null() | (Delivery.lease_until < now)
    due = (
        Delivery.select(Delivery.id)
        .where((Delivery.status == "pending") & (Delivery.next_attempt_at <= now) & free)
        .order_by(Delivery.next_attempt_at)
        .limit(limit)
    )
    if not isinstance(database.obj, peewee.SqliteDatabase):
        due = due.for_update(skip_locked=True)
    lease_until = now + timedelta(seconds=_lease_seconds())
    with database.atomic():
        claimed = (
            Delivery.update(lease_token=token, lease_until=lease_until)
            .where(Delivery.id.in_(due) & (Delivery.status == "pending") & free)
            .execute()
        )
    if not claimed:
        return []
    rows = (
        Delivery.select(Delivery, Event, Webhook)
        .join(Event)
        .switch(Delivery)
        .join(Webhook, peewee.JOIN.LEFT_OUTER)
        .where(Delivery.lease_token == token)
        .order_by(Delivery.next_attempt_at)
    )
    return [Claimed(row, row.event, row.webhook if row.webhook_id else None) for row in rows]


def _admit_rate_limited(batch: list[Claimed]) -> list[Claimed]:
    """Apply webhooks' ``rate_limit_per_second``: over-limit deliveries wait, never drop.

    Each second has a Redis counter per webhook; the n-th delivery over the limit is moved to
    the start of the second it fits in and its lease released (it is not an attempt).
    """
    limited = [c for c in batch if c.webhook is not None and c.webhook.rate_limit_per_second]
    if not limited:
        return batch
    second = int(time.time())
    pipe = get_redis().pipeline(transaction=False)
    for item in limited:
        key = f"sb:whrl:{item.webhook.id}:{second}"  # type: ignore[union-attr]
        pipe.incr(key)
        pipe.expire(key, 5)
    counts = pipe.execute()[::2]
    postponed: dict[str, datetime] = {}
    for item, count in zip(limited, counts, strict=True):
        limit = item.webhook.rate_limit_per_second  # type: ignore[union-attr]
        if count > limit:
            wait = 1 + (count - limit - 1) // limit
            postponed[item.delivery.id] = datetime.fromtimestamp(second + wait, UTC).replace(
                tzinfo=None
            )
    for delivery_id, when in postponed.items():
        Delivery.update(next_attempt_at=when, lease_token=None, lease_until=None).where(
            Delivery.id == delivery_id
        ).execute()
    return [c for c in batch if c.delivery.id not in postponed]


_pool: tuple[int, ThreadPoolExecutor] | None = None  # (owning pid, pool)
_pool_lock = threading.Lock()


def _send_pool() -> ThreadPoolExecutor:
    """This process's sending threads, started once and reused by every batch and job.

    Starting 32 threads per batch cost more than sending it. A forked child (a forking RQ
    worker) does not inherit threads, so it makes its own pool.
    """
    global _pool  # noqa: PLW0603 - one lazily created pool per process
    pool = _pool
    if pool is None or pool[0] != os.getpid():
        with _pool_lock:
            pool = _pool
            if pool is None or pool[0] != os.getpid():
                executor = ThreadPoolExecutor(max_workers=SEND_THREADS, thread_name_prefix="send")
                pool = _pool = (os.getpid(), executor)
    return pool[1]


def _perform_all(batch: list[Claimed]) -> list[SendResult]:
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def attempt(item: Claimed) -> SendResult:
        try:
            return perform(item)
        except Exception as exc:  # noqa: BLE001 - one bad delivery must not sink the batch
            log.exception("delivery %s crashed", item.delivery.id)
            return SendResult(False, None, 0.0, f"internal error: {type(exc).__name__}")

    def run(item: Claimed) -> SendResult:
        with app.app_context():
            return attempt(item)

    # Timeouts bound each socket read, not a whole answer: a peer dripping bytes could hold a
    # send past its lease. Waiting at most this long keeps the batch inside its lease; a send
    # still running then counts as failed (its thread finishes in the background, unrecorded).
    deadline = _longest_attempt(batch) + float(current_app.config["DELIVERY_LEASE_MARGIN"]) / 2
    futures = [_send_pool().submit(run, item) for item in batch]
    done, _ = wait(futures, timeout=deadline)
    return [
        future.result()
        if future in done
        else SendResult(False, None, deadline * 1000, f"no complete answer within {deadline:g} s")
        for future in futures
    ]


def _longest_attempt(batch: list[Claimed]) -> float:
    """Seconds the slowest attempt in ``batch`` may take by its own timeout."""
    connector = float(current_app.config["CONNECTOR_TIMEOUT"])
    return max(
        (c.webhook.timeout_ms / 1000 if c.webhook is not None else connector for c in batch),
        default=connector,
    )


def perform(item: Claimed) -> SendResult:
    """Attempt one delivery: a signed webhook POST, or a subscribed connector action."""
    event, webhook = item.event, item.webhook
    if webhook is not None:
        if webhook.status != "active":
            return SendResult(False, None, 0.0, "webhook is disabled", final=True)
        body = event_body(event.type, event.created_at, event.payload)
        return send_signed(
            webhook.url, signing_secrets(webhook), event.id, body, webhook.timeout_ms
        )
    from app.events.subscriptions import run_subscription

    return run_subscription(item.delivery, event)


@dataclass
class _Writes:
    """Rows one ``record_outcomes`` transaction inserts in bulk, and webhook health so far."""

    attempts: list[dict[str, Any]] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    # Delivery ids by the identical new state they get (one UPDATE per distinct state).
    outcomes: dict[tuple[Any, ...], list[str]] = field(default_factory=dict)
    # Webhooks whose failure streak this transaction ended with no failure since:
    # resetting them again would write the same value.
    reset: set[str] = field(default_factory=set)
    # Webhooks not active (before or during this transaction): their deliveries are held.
    disabled: set[str] = field(default_factory=set)
    newly_disabled: list[str] = field(default_factory=list)
    # Webhooks failing in this transaction: when they started failing, and failed attempts.
    failing_since: dict[str, datetime] = field(default_factory=dict)
    failed_attempts: dict[str, int] = field(default_factory=dict)


def record_outcomes(batch: list[Claimed], results: list[SendResult]) -> None:
    """Persist each attempt: delivery state, attempt row, integration log, webhook health.

    Deliveries that end in the same state are updated with one statement, and attempt and log
    rows are inserted in bulk at the end of the transaction (nothing here reads them back):
    building SQL costs far more than running it, and this keeps the transaction, and so
    SQLite's write lock, short. A disabled webhook's deliveries are held, never failed.
    """
    schedule = current_app.config["WEBHOOK_RETRY_SCHEDULE"]
    disable_after = timedelta(seconds=float(current_app.config["WEBHOOK_DISABLE_AFTER"]))
    now = utcnow()
    events_to_emit: list[tuple[str, dict[str, Any]]] = []
    writes = _Writes()
    # Read before the transaction: on SQLite, a transaction that reads before it writes fails
    # at once if another connection wrote meanwhile. Disabled later: the next claim holds it.
    hook_ids = {c.webhook.id for c in batch if c.webhook is not None}
    if hook_ids:
        inactive = Webhook.select(Webhook.id).where(
            Webhook.id.in_(list(hook_ids)) & (Webhook.status != "active")
        )
        writes.disabled = {row.id for row in inactive}
    with database.atomic():
        for item, result in zip(batch, results, strict=True):
            events_to_emit += _record_one(item, result, schedule, disable_after, now, writes)
        for (status, attempt, next_at, code, error, token), ids in writes.outcomes.items():
            changes: dict[Any, Any] = {
                Delivery.status: status,
                Delivery.attempts: attempt,
                Delivery.last_status_code: code,
                Delivery.last_error: error,
                Delivery.lease_token: None,
                Delivery.lease_until: None,
                Delivery.updated_at: now,
            }
            if next_at is not None:  # else the due time stays as it was
                changes[Delivery.next_attempt_at] = next_at
            for chunk in peewee.chunked(ids, 500):
                Delivery.update(changes).where(
                    Delivery.id.in_(chunk) & (Delivery.lease_token == token)
                ).execute()
        _save_failures(writes)
        for webhook_id in writes.newly_disabled:  # retries recorded above are held too
            hold_pending(webhook_id)
        # A delivery deleted mid-flight (its webhook or integration was deleted) has no row
        # left to hang its attempt on; everything else in the batch is still recorded.
        sent = [row["delivery"] for row in writes.attempts]
        alive = {
            d.id
            for chunk in peewee.chunked(sent, 500)
            for d in Delivery.select(Delivery.id).where(Delivery.id.in_(chunk))
        }
        attempts = [row for row in writes.attempts if row["delivery"] in alive]
        for rows in peewee.chunked(attempts, 100):
            DeliveryAttempt.insert_many(rows).execute()
        for rows in peewee.chunked(writes.logs, 100):
            IntegrationLog.insert_many(rows).execute()
        observe.logs_written(writes.logs)
        from app.events.catalog import emit_event

        for event_type, data in events_to_emit:
            emit_event(event_type, data)


def _record_one(
    item: Claimed,
    result: SendResult,
    schedule: list[float],
    disable_after: timedelta,
    now: datetime,
    writes: _Writes,
) -> list[tuple[str, dict[str, Any]]]:
    delivery, webhook = item.delivery, item.webhook
    if webhook is not None and webhook.status != "active" and not result.success:
        # Claimed while its webhook was disabled, so not sent: no attempt to record.
        status = "held" if webhook.id in writes.disabled else "pending"
        kept = (delivery.attempts, None, delivery.last_status_code, delivery.last_error)
        writes.outcomes.setdefault((status, *kept, delivery.lease_token), []).append(delivery.id)
        return []
    attempt = delivery.attempts + 1
    emitted: list[tuple[str, dict[str, Any]]] = []
    next_at: datetime | None = None
    gone = webhook is not None and result.status_code == 410
    if webhook is not None:
        emitted += _update_webhook_health(webhook, result, gone, disable_after, now, writes)
    if result.success:
        status = "succeeded"
    elif webhook is not None and webhook.id in writes.disabled:
        status = "held"  # sent (or discarded) when the webhook is enabled again
    elif gone or result.final or attempt >= delivery.max_attempts:
        status = "failed"
    else:
        status = "pending"
        delay = result.retry_after or retry_delay(schedule, attempt)
        next_at = now + timedelta(seconds=min(delay, MAX_RETRY_DELAY))
    state = (status, attempt, next_at, result.status_code, result.error, delivery.lease_token)
    writes.outcomes.setdefault(state, []).append(delivery.id)
    writes.attempts.append(
        {
            "delivery": delivery.id,
            "attempt": attempt,
            "status_code": result.status_code,
            "response_time_ms": round(result.response_time_ms, 2),
            "error": result.error,
            "response_body": result.response_body,
            "next_attempt_at": next_at,
        }
    )
    observe.attempt_recorded(delivery, item.event, webhook, result, status, attempt, next_at)
    if webhook is None:  # a subscription: execute_action already logged the run
        return emitted
    log_status = "success" if result.success else ("pending" if status == "pending" else "error")
    writes.logs.append(
        {
            "integration_id": webhook.integration_id,
            "event_type": "webhook.delivery",
            "event_data": {
                "delivery_id": delivery.id,
                "event_id": item.event.id,
                "event_type": item.event.type,
                "webhook_id": webhook.id,
                "attempt": attempt,
                "status_code": result.status_code,
                "next_attempt_at": next_at.isoformat() + "Z" if next_at else None,
            },
            "status": log_status,
            "error_message": result.error,
            "response_time_ms": round(result.response_time_ms, 2),
        }
    )
    return emitted


def _update_webhook_health(
    webhook: Webhook,
    result: SendResult,
    gone: bool,
    disable_after: timedelta,
    now: datetime,
    writes: _Writes,
) -> list[tuple[str, dict[str, Any]]]:
    """A success ends the webhook's failure streak; failing for ``disable_after`` (or a 410
    Gone) disables it. Time, not a count: a short outage with fast retries must not disable."""
    if result.success:
        writes.failing_since.pop(webhook.id, None)
        writes.failed_attempts.pop(webhook.id, None)
        if webhook.id not in writes.reset:
            streak = (Webhook.consecutive_failures != 0) | Webhook.failing_since.is_null(False)
            Webhook.update(consecutive_failures=0, failing_since=None).where(
                (Webhook.id == webhook.id) & streak
            ).execute()
            writes.reset.add(webhook.id)
        return []
    writes.reset.discard(webhook.id)
    writes.failed_attempts[webhook.id] = writes.failed_attempts.get(webhook.id, 0) + 1
    if webhook.id in writes.disabled:
        return []
    since = writes.failing_since.get(webhook.id)
    if since is None:
        Webhook.update(failing_since=peewee.fn.COALESCE(Webhook.failing_since, now)).where(
            Webhook.id == webhook.id
        ).execute()
        current = Webhook.get_or_none(Webhook.id == webhook.id)
        if current is None:  # deleted while its delivery was in flight
            return []
        since = writes.failing_since[webhook.id] = current.failing_since or now
    if gone:
        reason = "receiver answered 410 Gone"
    elif now - since >= disable_after:
        reason = f"failing with no success since {since.isoformat(timespec='seconds')}Z"
    else:
        return []
    changed = (
        Webhook.update(status="disabled", disabled_reason=reason, updated_at=now)
        .where((Webhook.id == webhook.id) & (Webhook.status == "active"))
        .execute()
    )
    writes.disabled.add(webhook.id)
    if not changed:
        return []
    writes.newly_disabled.append(webhook.id)
    log.warning("webhook %s disabled: %s", webhook.id, reason)
    observe.webhook_disabled(gone)
    return [
        (
            "webhook.disabled",
            {
                "webhook_id": webhook.id,
                "url": webhook.url,
                "reason": reason,
                "integration_id": webhook.integration_id,
                "failing_since": since.isoformat() + "Z",
            },
        )
    ]


def _save_failures(writes: _Writes) -> None:
    """Add this transaction's failed attempts to each webhook's ``consecutive_failures``."""
    for webhook_id, count in writes.failed_attempts.items():
        Webhook.update(consecutive_failures=Webhook.consecutive_failures + count).where(
            Webhook.id == webhook_id
        ).execute()


def _schedule_next_wake() -> None:
    """Ask RQ's scheduler to wake a dispatcher when the next retry falls due."""
    nxt = (
        Delivery.select(Delivery.next_attempt_at)
        .where(Delivery.status == "pending")
        .order_by(Delivery.next_attempt_at)
        .first()
    )
    if nxt is not None:
        schedule_wake(nxt.next_attempt_at)
