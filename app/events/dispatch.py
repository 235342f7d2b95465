"""The outbox dispatcher job: claim due deliveries, send them concurrently, record each outcome.

One RQ job keeps up to ``SEND_THREADS`` sends in flight. It claims due deliveries with a short
lease whenever sending threads are free, records each outcome as soon as its own send ends
(outcomes that end together share one transaction), and renews the leases of the sends still
running. A slow or failing endpoint so delays only its own deliveries: at most
``WEBHOOK_MAX_IN_FLIGHT`` sends of one webhook (or of one integration's subscribed actions) are
in flight in a worker, and everything else keeps flowing past them. Tenants are kept apart the
same way: one tenant's sends take at most ``TENANT_MAX_IN_FLIGHT`` of a worker's threads, so
its backlog never starves another tenant, and a suspended tenant's deliveries are not claimed
(they wait, and go once it is resumed).

Claiming is operator-wide on purpose (one query serves every tenant); each delivery carries its
tenant, and everything recorded for it (attempts, logs, events, usage) goes to that tenant.

A job moves through three phases (:class:`Phase`): it *claims* for
``SWITCHBOARD_DISPATCH_JOB_SECONDS``, or until nothing is due and nothing is in flight; then,
if its time ran out, it *drains* — hands the work it never started back, wakes a fresh job and
only finishes the sends it has in flight, each bounded by its timeout — and is *done*. RQ's
own time limit for the job (:func:`app.events.outbox.dispatch_job_timeout`) is derived from
these bounds, so it is never what ends a job.

A worker that dies stops renewing: its leases lapse within ``DELIVERY_LEASE_SECONDS``. The
next dispatcher that looks for work records each such delivery's lost attempt (``worker
lost``) and makes it due again, so only what was in flight is resent — at least once, nothing
lost, and the history says so. A worker asked to stop (SIGTERM) drains at once: it waits
``STOP_GRACE`` seconds for its sends in flight, then hands back the rest the same way (``worker
stopped``), without waiting for their leases to lapse.
"""

from __future__ import annotations

import enum
import logging
import os
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import peewee
import redis
from flask import current_app

from app.events import fifo, observe, progress
from app.events.erasure import EVENT_ERASED
from app.events.held import hold_pending, requeue
from app.events.outbox import (
    ANNOUNCED,
    NUDGE_CHANNEL,
    SEND_GRACE,
    WAKE_FLAG,
    fresh_tenants,
    schedule_wake,
    wake_dispatcher,
)
from app.limits.enforce import usage_buffer
from app.outbound.guard import REFUSED
from app.store.bulk import insert_rows
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
from app.webhooks.client_credentials import TOKEN_URL_REFUSED
from app.webhooks.endpoint import send_to_endpoint
from app.webhooks.sender import SendResult, event_body
from app.workers import stopping

log = logging.getLogger(__name__)

# Threads wait on sockets, not the CPU: enough that two endpoints hanging at their in-flight
# cap still leave a third of them to everyone else.
SEND_THREADS = 48
MAX_RETRY_DELAY = 24 * 3600  # a hostile Retry-After must not overflow datetime arithmetic
COALESCE_SECONDS = 0.005  # how long to wait for the next send ending before recording
POLL_SECONDS = 0.02  # how often a job with sends in flight checks for announced work
RECHECK_SECONDS = 1.0  # ... and looks for due work anyway (retries, lapsed leases)
WORKER_LOST = "worker lost: its lease lapsed while the attempt was in flight"
WORKER_STOPPED = "worker stopped before the answer came: handed back to be sent again"
ENDED = ("succeeded", "failed")  # a fifo queue's head that ends lets the next one go


@dataclass
class Claimed:
    delivery: Delivery
    event: Event
    webhook: Webhook | None

    @property
    def target(self) -> str:
        """What the in-flight cap counts by: the webhook, or the subscribed integration."""
        return self.delivery.webhook_id or self.delivery.integration_id or ""

    @property
    def tenant_id(self) -> str:
        return str(self.delivery.tenant_id)


def dispatch_due() -> int:
    """RQ job: perform due deliveries until none are left (or its time is up); return count."""
    get_redis().delete(WAKE_FLAG)  # publishes from now on wake another job
    seconds = float(current_app.config["DISPATCH_JOB_SECONDS"])
    with database.connection_context():
        done = Dispatcher().run(time.monotonic() + seconds)
        _schedule_next_wake()
    return done


@dataclass
class _Send:
    item: Claimed
    deadline: float  # time.monotonic() after which the send counts as failed


class Phase(enum.Enum):
    """Where a dispatcher job is in its life; :meth:`Dispatcher.run` moves it forward only."""

    CLAIMING = "claiming"  # claims due work for free threads, sends and records it
    DRAINING = "draining"  # its time is up: claims nothing, finishes the sends in flight
    DONE = "done"


class Dispatcher:
    """One job's sends in flight, claimed under one lease token and renewed together."""

    def __init__(self) -> None:
        config = current_app.config
        self.app = current_app._get_current_object()  # type: ignore[attr-defined]
        self.token = new_id("lease", 16)
        self.lease = float(config["DELIVERY_LEASE_SECONDS"])
        self.cap = int(config["WEBHOOK_MAX_IN_FLIGHT"])
        self.tenant_cap = int(config["TENANT_MAX_IN_FLIGHT"])
        self.connector_timeout = float(config["CONNECTOR_TIMEOUT"])
        self.in_flight: dict[str, _Send] = {}  # by delivery id
        # Sends as they end; None is a nudge (new work announced: look now, not at the poll).
        # A queue.Queue, not a SimpleQueue: on Python 3.11 SimpleQueue.get(timeout=...) waits
        # for ever once a signal handler (SIGTERM's) outlasts the timeout.
        self.finished: queue.Queue[tuple[str, SendResult] | None] = queue.Queue()
        self.renewed = time.monotonic()
        # Claimed deliveries of webhooks at their in-flight cap, by webhook (or integration).
        self.waiting: dict[str, deque[Claimed]] = {}
        self.capped = False  # the last claim skipped or held back deliveries over the cap
        self.done = 0
        self.phase = Phase.CLAIMING
        self.look = True  # more may be due right away: claim on the next turn
        self.looked = 0.0  # time.monotonic() of the last claim
        self.announced = 0  # wake-ups announced as of the last check
        self.fresh: set[str] = set()  # tenants announced with new work: claim theirs next turn
        self.fresh_since = time.time()  # the newest tenant announcement seen
        self.stop_by: float | None = None  # asked to stop: hand back what is in flight then

    def run(self, until: float) -> int:
        """Claim, send and record until nothing is due and nothing in flight, or ``until``;
        then finish what is in flight. Returns how many attempts were recorded."""
        self.announced = self._announced()
        _listen_for_nudges(self.app)
        with _nudged_lock:
            _nudged.add(self.finished)
        try:
            while self.phase is not Phase.DONE:
                if self.phase is Phase.CLAIMING:
                    self._claiming_turn(until)
                else:
                    self._draining_turn()
        finally:
            with _nudged_lock:
                _nudged.discard(self.finished)
            self._release_waiting()  # normally empty already; never left leased to a past job
        return self.done

    def _claiming_turn(self, until: float) -> None:
        now = time.monotonic()
        if now >= until or stopping.requested():
            self._hand_over()
            return
        if self.look or now - self.looked >= RECHECK_SECONDS:
            self.fresh.clear()  # the claim looks at every tenant
            self.look, self.looked = self._fill(), now
        elif self.fresh:
            self.look = self._fill(self.fresh)
            self.fresh.clear()
        if not self.in_flight and not self.look:
            self.phase = Phase.DONE  # nothing due, nothing in flight
            return
        ended = self._collect()
        self._record(ended)
        self._start_waiting()
        if self.capped and any(item.target not in self.waiting for item, _ in ended):
            # A capped target whose send ended, with nothing of it left waiting here, may
            # have more due. (One whose waiting deliveries took the free place needs no
            # claim: claiming then would only scan past its backlog again.)
            self.look = True
        self._renew()
        if not self.look and (latest := self._announced()) != self.announced:
            self.announced = latest
            self._take_announcements()

    def _take_announcements(self) -> None:
        """New work was announced: claim for the tenants it names, or everywhere when it
        names none (a retry fell due, the reconciler, a resumed tenant)."""
        try:
            tenants, self.fresh_since = fresh_tenants(self.fresh_since)
        except redis.RedisError:
            tenants = []
        if tenants:
            self.fresh.update(tenants)
        else:
            self.look = True

    def _hand_over(self) -> None:
        """Time's up, maybe with work left: a fresh job claims while this one only drains."""
        self._release_waiting()
        wake_dispatcher()
        self.phase = Phase.DRAINING

    def _draining_turn(self) -> None:
        if not self.in_flight:
            self.phase = Phase.DONE
            return
        if stopping.requested():
            self.stop_by = self.stop_by or time.monotonic() + stopping.STOP_GRACE
            if time.monotonic() >= self.stop_by:  # their threads finish in the background
                sends = [send.item.delivery for send in self.in_flight.values()]
                self.in_flight.clear()
                hand_back_lost(sends, WORKER_STOPPED)
                self.phase = Phase.DONE
                return
        self._record(self._collect())
        self._renew()

    def _fill(self, only: set[str] | None = None) -> bool:
        """Claim (of every tenant, or of those in ``only``) and start sends for free threads;
        True if more may be due right away."""
        free = SEND_THREADS - _pool_busy()
        if free <= 0:
            return True  # look again once threads are free
        if time.monotonic() - self.looked >= RECHECK_SECONDS:
            release_lapsed()
        progress.claim_pass()
        load = self._load()
        busy = {target for target, n in load.items() if n >= self.cap} | self.waiting.keys()
        tenants = self._tenant_load()
        full = {tenant for tenant, n in tenants.items() if n >= self.tenant_cap}
        if only is None:
            batch = claim_due(free, token=self.token, busy=busy, busy_tenants=full)
        else:  # each through its own index range: past nobody's backlog
            batch = []
            for tenant_id in sorted(only - full):
                batch += claim_due(
                    free - len(batch), token=self.token, busy=busy, tenant_id=tenant_id
                )
                if len(batch) >= free:
                    break
        self.capped = bool(busy or full)
        over: list[Claimed] = []
        deferred = 0
        for item in _admit_rate_limited(batch):
            if load[item.target] >= self.cap:  # leased to this job, starts when there is room
                self.waiting.setdefault(item.target, deque()).append(item)
                deferred += 1
            elif tenants[item.tenant_id] >= self.tenant_cap:
                over.append(item)  # its tenant sends its share of this worker: back it goes
            else:
                load[item.target] += 1
                tenants[item.tenant_id] += 1
                self._start(item)
        self._hand_back([item.delivery.id for item in over])
        if over or deferred:
            self.capped = True
        # More may be due right away only if every place was taken by a send that started:
        # deliveries held back by a cap say the next claim waits for a send of theirs to end.
        return len(batch) == free and not over and not deferred

    def _load(self) -> Counter[str]:
        return Counter(send.item.target for send in self.in_flight.values())

    def _tenant_load(self) -> Counter[str]:
        """Sends in flight by tenant (what ``TENANT_MAX_IN_FLIGHT`` caps; waiting deliveries
        hold no thread and do not count)."""
        return Counter(send.item.tenant_id for send in self.in_flight.values())

    def _start_waiting(self) -> None:
        """Start waiting deliveries of webhooks whose sends ended (they are already leased)."""
        if not self.waiting:
            return
        load, tenants = self._load(), self._tenant_load()
        for target in list(self.waiting):
            queued = self.waiting[target]
            while (
                queued
                and load[target] < self.cap
                and tenants[queued[0].tenant_id] < self.tenant_cap
                and _pool_busy() < SEND_THREADS
            ):
                item = queued.popleft()
                load[target] += 1
                tenants[item.tenant_id] += 1
                self._start(item)
            if not queued:
                del self.waiting[target]

    def _release_waiting(self) -> None:
        """Hand deliveries that never started back to the queue (not an attempt)."""
        self._hand_back([item.delivery.id for queued in self.waiting.values() for item in queued])
        self.waiting.clear()

    def _hand_back(self, ids: list[str]) -> None:
        for chunk in peewee.chunked(ids, 500):
            Delivery.update(lease_token=None, lease_until=None).where(
                Delivery.id.in_(chunk) & (Delivery.lease_token == self.token)
            ).execute()

    def _start(self, item: Claimed) -> None:
        delivery_id = item.delivery.id
        limit = _attempt_seconds(item, self.connector_timeout) + SEND_GRACE
        self.in_flight[delivery_id] = _Send(item, time.monotonic() + limit)
        app, finished = self.app, self.finished

        def run() -> None:
            with app.app_context():
                finished.put((delivery_id, _attempt(item)))

        _submit(run)

    def _collect(self) -> list[tuple[Claimed, SendResult]]:
        """Sends that ended (waiting up to ``POLL_SECONDS`` for one) or overran their time."""
        ended: list[tuple[str, SendResult]] = []
        try:
            got = self.finished.get(timeout=POLL_SECONDS)
            # Sends that end close together share one transaction: building SQL costs more
            # than running it, and short transactions keep SQLite's write lock free. A nudge
            # ends the wait: new work was announced.
            while got is not None:
                ended.append(got)
                if len(ended) >= len(self.in_flight):
                    break
                got = self.finished.get(timeout=COALESCE_SECONDS)
        except queue.Empty:
            pass
        now = time.monotonic()
        for delivery_id, send in self.in_flight.items():
            if now > send.deadline:  # its thread finishes in the background, unrecorded
                limit = _attempt_seconds(send.item, self.connector_timeout) + SEND_GRACE
                error = f"no complete answer within {limit:g} s"
                ended.append((delivery_id, SendResult(False, None, limit * 1000, error)))
        return [
            (self.in_flight.pop(delivery_id).item, result)
            for delivery_id, result in ended
            if delivery_id in self.in_flight  # else already recorded as overrun
        ]

    def _record(self, ended: list[tuple[Claimed, SendResult]]) -> None:
        if ended:
            record_outcomes([item for item, _ in ended], [result for _, result in ended])
            self.done += len(ended)

    def _renew(self) -> None:
        """Heartbeat: extend the lease of every send still in flight (every third of a lease)."""
        now = time.monotonic()
        if not self.in_flight or now - self.renewed < self.lease / 3:
            return
        self.renewed = now
        Delivery.update(lease_until=utcnow() + timedelta(seconds=self.lease)).where(
            Delivery.lease_token == self.token
        ).execute()

    @staticmethod
    def _announced() -> int:
        """How many wake-ups were announced so far (publishes, retries due, reconciler)."""
        try:
            return int(get_redis().get(ANNOUNCED) or 0)
        except redis.RedisError:  # the periodic recheck still finds due work
            return 0


def _attempt(item: Claimed) -> SendResult:
    try:
        return perform(item)
    except Exception as exc:  # noqa: BLE001 - one bad delivery must not sink the others
        log.exception("delivery %s crashed", item.delivery.id)
        return SendResult(False, None, 0.0, f"internal error: {type(exc).__name__}")


def _attempt_seconds(item: Claimed, connector_timeout: float) -> float:
    return item.webhook.timeout_ms / 1000 if item.webhook is not None else connector_timeout


def claim_due(
    limit: int,
    *,
    token: str | None = None,
    busy: set[str] | frozenset[str] = frozenset(),
    busy_tenants: set[str] | frozenset[str] = frozenset(),
    tenant_id: str | None = None,
) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries (of ``tenant_id`` only, if given) and load what
    sending them needs.

    ``busy`` names webhooks and integrations already at their in-flight cap, ``busy_tenants``
    tenants at theirs: their deliveries are skipped, so a backlog of one slow endpoint, or of
    one tenant, does not crowd out everyone else's. A suspended tenant's are never claimed.
    """
    if limit <= 0:
        return []
    now = utcnow()
    token = token or new_id("lease", 16)
    # Never leased or handed back. A lapsed lease is taken only after ``release_lapsed`` has
    # recorded the attempt its dead worker lost.
    free = Delivery.lease_token.is_null()
    wanted = progress.claimable() & (Delivery.next_attempt_at <= now) & free
    if busy:
        wanted &= Delivery.webhook.is_null() | Delivery.webhook.not_in(busy)
        wanted &= Delivery.integration.is_null() | Delivery.integration.not_in(busy)
    if busy_tenants:
        wanted &= Delivery.tenant_id.not_in(busy_tenants)
    if tenant_id is not None:
        wanted &= Delivery.tenant_id == tenant_id
    # Oldest first; a claim for one tenant's announced work takes the newest first instead:
    # that work was just published, and reading from the newest end never walks past the
    # backlog of a webhook at its cap (the every-second claim of all tenants takes the oldest).
    order = Delivery.next_attempt_at.desc() if tenant_id else Delivery.next_attempt_at
    due = Delivery.select(Delivery.id).where(wanted).order_by(order).limit(limit)
    sqlite = isinstance(database.obj, peewee.SqliteDatabase)
    if sqlite:
        chosen = Delivery.id.in_(due)
    else:
        # ARRAY(...) runs the locking subquery once. As `id IN (subquery)` PostgreSQL may
        # rescan it for every row it updates, and each rescan skips the rows this very
        # statement already updated and locks the next ones: a claim of 4 leased everything due.
        chosen = Delivery.id == peewee.fn.ANY(
            peewee.NodeList((peewee.SQL("ARRAY"), due.for_update(skip_locked=True)))
        )
    lease_until = now + timedelta(seconds=float(current_app.config["DELIVERY_LEASE_SECONDS"]))
    claim = Delivery.update(lease_token=token, lease_until=lease_until).where(
        chosen & (Delivery.status == "pending") & free
    )
    if sqlite:
        with database.atomic():  # BEGIN IMMEDIATE: the write lock before the read
            claimed = claim.execute()
    else:  # one statement is its own transaction: no BEGIN and COMMIT round trips
        claimed = claim.execute()
    if not claimed:
        return []
    rows = (
        Delivery.select(Delivery, Event, Webhook)
        .join(Event)
        .switch(Delivery)
        .join(Webhook, peewee.JOIN.LEFT_OUTER)
        .where((Delivery.lease_token == token) & (Delivery.lease_until == lease_until))
        .order_by(Delivery.next_attempt_at)
    )
    return [Claimed(row, row.event, row.webhook if row.webhook_id else None) for row in rows]


def release_lapsed(limit: int = 500) -> int:
    """Record the lost attempt of each delivery whose lease lapsed and make it due again.

    A lease lapses only when its worker stopped renewing it mid-send (killed, or cut off from
    the database): the receiver may have got the request, so the attempt counts (see
    :func:`hand_back_lost`, error :data:`WORKER_LOST`). Returns how many were released.
    """
    now = utcnow()
    lapsed = list(
        Delivery.select(Delivery.id, Delivery.lease_token, Delivery.lease_until)
        .where(
            (Delivery.status == "pending")
            & Delivery.lease_token.is_null(False)
            & (Delivery.lease_until < now)
        )
        .limit(limit)
    )
    return hand_back_lost(lapsed, WORKER_LOST)


def hand_back_lost(leased: list[Delivery], reason: str) -> int:
    """Record an attempt for each of ``leased`` whose answer never came (``reason``, with the
    lease), release it and make it due again; return how many were released.

    The receiver may have got the request, so the attempt counts — in the delivery's
    ``attempts``, as an attempt row and a log entry — and a delivery whose budget it used up
    fails (a payload that kills its worker every time must not be retried for ever). Each row
    is released with a compare-and-swap on the lease it had, so two dispatchers never record
    the same loss twice, and one recorded meanwhile is left alone.
    """
    if not leased:
        return 0
    leases = {row.id: (row.lease_token, row.lease_until) for row in leased}
    rows = list(
        Delivery.select(Delivery, Webhook.id, Webhook.integration)
        .join(Webhook, peewee.JOIN.LEFT_OUTER)
        .where(Delivery.id.in_(list(leases)) & (Delivery.status == "pending"))
    )
    now = utcnow()
    attempts: list[dict[str, Any]] = []
    logs: list[dict[str, Any]] = []
    failed: list[Delivery] = []
    with database.atomic():
        fifo.lock_queues(fifo.queues_of(rows))
        for row in rows:
            token, lease_until = leases[row.id]
            if token is None or row.lease_token != token:
                continue
            attempt = row.attempts + 1
            until = lease_until.isoformat() + "Z" if lease_until else "?"
            error = f"{reason} (lease {token} until {until})"
            released = (
                Delivery.update(
                    status="pending" if attempt < row.max_attempts else "failed",
                    attempts=attempt,
                    lease_token=None,
                    lease_until=None,
                    last_status_code=None,
                    last_error=error,
                    next_attempt_at=now,
                    updated_at=now,
                )
                .where((Delivery.id == row.id) & (Delivery.lease_token == token))
                .execute()
            )
            if not released:
                continue
            if attempt >= row.max_attempts:
                failed.append(row)
            attempts.append(
                {
                    "tenant_id": row.tenant_id,
                    "delivery": row.id,
                    "attempt": attempt,
                    "status_code": None,
                    "response_time_ms": None,
                    "error": error,
                    "response_body": None,
                    "next_attempt_at": now if attempt < row.max_attempts else None,
                }
            )
            if row.webhook_id and row.webhook is not None:
                logs.append(
                    {
                        "tenant_id": row.tenant_id,
                        "integration_id": row.webhook.integration_id,
                        "event_type": "webhook.delivery",
                        "event_data": {
                            "delivery_id": row.id,
                            "event_id": row.event_id,
                            "webhook_id": row.webhook_id,
                            "attempt": attempt,
                            "status_code": None,
                        },
                        "status": "error",
                        "error_message": error,
                        "response_time_ms": None,
                    }
                )
        insert_rows(DeliveryAttempt, attempts)
        insert_rows(IntegrationLog, logs)
        fifo.promote_ended(failed)
    if attempts:
        log.warning("%d deliveries handed back (%s); attempts recorded", len(attempts), reason)
        observe.logs_written(logs)
        wake_dispatcher()  # another worker, or this one, sends them again
    return len(attempts)


def requeue_refused(tenant_id: str, webhook_id: str) -> int:
    """Make the webhook's guard-refused deliveries due again (its URL changed); return count.

    Call inside the transaction that changes the URL: the dispatcher is woken after commit.
    A refusal used no retry, so each gets at least one more attempt. A disabled webhook's
    come back ``held``, to be sent when it is enabled.
    """
    more = peewee.Case(
        None,
        [(Delivery.max_attempts > Delivery.attempts, Delivery.max_attempts)],
        Delivery.attempts + 1,
    )
    refused = (Delivery.status == "failed") & Delivery.last_error.in_([REFUSED, TOKEN_URL_REFUSED])
    return requeue(tenant_id, webhook_id, refused, max_attempts=more)


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


# The running dispatchers' queues a nudge is put on, and the pid whose listener runs.
_nudged: set[queue.Queue[tuple[str, SendResult] | None]] = set()
_nudged_lock = threading.Lock()
_listener_pid: int | None = None


def _listen_for_nudges(app: Any) -> None:
    """Start (once per process) the thread that wakes this process's running dispatchers
    when work is announced (``NUDGE_CHANNEL``), so none waits for its next poll."""
    global _listener_pid  # noqa: PLW0603 - one listener per process
    with _nudged_lock:
        if _listener_pid == os.getpid():
            return
        _listener_pid = os.getpid()

    def listen() -> None:
        while True:
            try:
                with app.app_context():
                    pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(NUDGE_CHANNEL)
                while True:
                    if pubsub.get_message(timeout=1.0) is not None:
                        with _nudged_lock:
                            for waiting in _nudged:
                                waiting.put(None)
            except redis.RedisError:  # the poll still finds the work; reconnect shortly
                time.sleep(1.0)

    threading.Thread(target=listen, name="dispatch-nudges", daemon=True).start()


_pool: tuple[int, queue.SimpleQueue[Any]] | None = None  # (owning pid, its work queue)
_pool_lock = threading.Lock()
_running = 0  # sends running in this process's pool, abandoned overrunning ones included


def _submit(fn: Any) -> None:
    """Run ``fn`` on this process's sending threads, counting it while it runs."""
    global _running  # noqa: PLW0603 - one count per process, like the pool

    def counted() -> None:
        global _running  # noqa: PLW0603
        try:
            fn()
        finally:
            with _pool_lock:
                _running -= 1

    with _pool_lock:
        _running += 1
    _send_pool().put(counted)


def _pool_busy() -> int:
    with _pool_lock:
        return _running


def _send_pool() -> queue.SimpleQueue[Any]:
    """This process's ``SEND_THREADS`` sending threads (their work queue), started once and
    reused by every job.

    Starting threads per job cost more than sending. They are daemon threads: a worker that
    stops never waits for a send still hanging on a slow receiver (a stopping dispatcher hands
    those back). A forked child (a forking RQ worker) does not inherit threads, so it makes its
    own pool.
    """
    global _pool  # noqa: PLW0603 - one lazily created pool per process
    pool = _pool
    if pool is None or pool[0] != os.getpid():
        with _pool_lock:
            pool = _pool
            if pool is None or pool[0] != os.getpid():
                work: queue.SimpleQueue[Any] = queue.SimpleQueue()
                for n in range(SEND_THREADS):
                    threading.Thread(
                        target=_send_loop, args=(work,), name=f"send_{n}", daemon=True
                    ).start()
                pool = _pool = (os.getpid(), work)
    return pool[1]


def _send_loop(work: queue.SimpleQueue[Any]) -> None:
    while True:
        work.get()()


def perform(item: Claimed) -> SendResult:
    """Attempt one delivery: a signed webhook POST, or a subscribed connector action."""
    event, webhook = item.event, item.webhook
    if event.erased_at is not None:
        return SendResult(False, None, 0.0, EVENT_ERASED, final=True)
    if webhook is not None:
        if webhook.status != "active":
            return SendResult(False, None, 0.0, "webhook is disabled", final=True)
        body = event_body(event.type, event.created_at, event.payload)
        return send_to_endpoint(webhook, event.id, body)
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
    newly_disabled: list[tuple[str, str]] = field(default_factory=list)  # (tenant, webhook)
    # Webhooks failing in this transaction: when they started failing, and failed attempts.
    failing_since: dict[str, datetime] = field(default_factory=dict)
    failed_attempts: dict[str, int] = field(default_factory=dict)
    # Deliveries that ended, by (tenant, succeeded|failed): the tenants' usage.
    finished: Counter[tuple[str, str]] = field(default_factory=Counter)
    # observe.attempt_recorded arguments: counted, announced and logged once committed.
    observed: list[tuple[Any, ...]] = field(default_factory=list)


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
    events_to_emit: list[tuple[str, str, dict[str, Any]]] = []  # (tenant, type, data)
    writes = _Writes()
    # Read before the transaction: on SQLite, a transaction that reads before it writes fails
    # at once if another connection wrote meanwhile. Disabled later: the next claim holds it.
    hook_ids = {c.webhook.id for c in batch if c.webhook is not None}
    if hook_ids:
        inactive = Webhook.select(Webhook.id).where(
            Webhook.id.in_(list(hook_ids)) & (Webhook.status != "active")
        )
        writes.disabled = {row.id for row in inactive}
    alive: set[str] = set()
    with database.atomic():
        fifo.lock_queues(fifo.queues_of(item.delivery for item in batch))
        _reset_streaks_of_clean_webhooks(batch, results, writes)
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
                updated = (
                    Delivery.update(changes)
                    .where(Delivery.id.in_(chunk) & (Delivery.lease_token == token))
                    .returning(Delivery.id)
                    .execute()
                )
                alive.update(row.id for row in updated)
        _save_failures(writes)
        for tenant_id, webhook_id in writes.newly_disabled:  # retries recorded above are held
            hold_pending(tenant_id, webhook_id)
        ended = {i for (status, *_), ids in writes.outcomes.items() if status in ENDED for i in ids}
        fifo.promote_ended(c.delivery for c in batch if c.delivery.id in ended & alive)
        # A delivery deleted mid-flight (its webhook or integration was deleted) has no row
        # left to hang its attempt on; everything else in the batch is still recorded. Those
        # updated above exist; only the rest (lease lost, or deleted) need looking up.
        sent = [row["delivery"] for row in writes.attempts]
        unknown = [delivery_id for delivery_id in sent if delivery_id not in alive]
        alive.update(
            d.id
            for chunk in peewee.chunked(unknown, 500)
            for d in Delivery.select(Delivery.id).where(Delivery.id.in_(chunk))
        )
        attempts = [row for row in writes.attempts if row["delivery"] in alive]
        insert_rows(DeliveryAttempt, attempts)
        insert_rows(IntegrationLog, writes.logs)
        from app.events.catalog import emit_event

        for tenant_id, event_type, data in events_to_emit:
            emit_event(event_type, data, tenant_id=tenant_id)
    # Metrics, the live stream and log lines tell of attempts the API can already show.
    for observed in writes.observed:
        observe.attempt_recorded(*observed)
    observe.logs_written(writes.logs)
    count_outcomes(writes.finished)


def _record_one(
    item: Claimed,
    result: SendResult,
    schedule: list[float],
    disable_after: timedelta,
    now: datetime,
    writes: _Writes,
) -> list[tuple[str, str, dict[str, Any]]]:
    delivery, webhook = item.delivery, item.webhook
    if webhook is not None and webhook.status != "active" and not result.success:
        # Claimed while its webhook was disabled, so not sent: no attempt to record.
        status = "held" if webhook.id in writes.disabled else "pending"
        kept = (delivery.attempts, None, delivery.last_status_code, delivery.last_error)
        writes.outcomes.setdefault((status, *kept, delivery.lease_token), []).append(delivery.id)
        return []
    attempt = delivery.attempts + 1
    emitted: list[tuple[str, str, dict[str, Any]]] = []
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
    if status in ("succeeded", "failed"):
        writes.finished[(delivery.tenant_id, status)] += 1
    writes.attempts.append(
        {
            "tenant_id": delivery.tenant_id,
            "delivery": delivery.id,
            "attempt": attempt,
            "status_code": result.status_code,
            "response_time_ms": round(result.response_time_ms, 2),
            "error": result.error,
            "response_body": result.response_body,
            "next_attempt_at": next_at,
        }
    )
    writes.observed.append((delivery, item.event, webhook, result, status, attempt, next_at))
    if webhook is None:  # a subscription: execute_action already logged the run
        return emitted
    log_status = "success" if result.success else ("pending" if status == "pending" else "error")
    writes.logs.append(
        {
            "tenant_id": delivery.tenant_id,
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


def _reset_streaks_of_clean_webhooks(
    batch: list[Claimed], results: list[SendResult], writes: _Writes
) -> None:
    """End the failure streak of every webhook whose outcomes in this batch all succeeded, in
    one statement (the common case: per webhook, it cost a round trip each batch). Webhooks
    with a failure in the batch are handled in order by ``_update_webhook_health``."""
    outcomes: dict[str, bool] = {}
    for item, result in zip(batch, results, strict=True):
        webhook = item.webhook
        if webhook is not None and webhook.status == "active":
            outcomes[webhook.id] = outcomes.get(webhook.id, True) and result.success
    clean = [webhook_id for webhook_id, success in outcomes.items() if success]
    if not clean:
        return
    streak = (Webhook.consecutive_failures != 0) | Webhook.failing_since.is_null(False)
    Webhook.update(consecutive_failures=0, failing_since=None).where(
        Webhook.id.in_(clean) & streak
    ).execute()
    writes.reset.update(clean)


def _update_webhook_health(
    webhook: Webhook,
    result: SendResult,
    gone: bool,
    disable_after: timedelta,
    now: datetime,
    writes: _Writes,
) -> list[tuple[str, str, dict[str, Any]]]:
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
    writes.newly_disabled.append((webhook.tenant_id, webhook.id))
    log.warning("webhook %s disabled: %s", webhook.id, reason)
    observe.webhook_disabled(gone)
    return [
        (
            webhook.tenant_id,
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


def count_outcomes(finished: Counter[tuple[str, str]]) -> None:
    """Add the deliveries that ended to their tenants' usage of the day."""
    buffer = usage_buffer()
    for (tenant_id, status), n in finished.items():
        buffer.count_tenant(tenant_id, f"deliveries_{status}", n)


def _schedule_next_wake() -> None:
    """Ask RQ's scheduler to wake a dispatcher when the next retry falls due (a suspended
    tenant's deliveries wake nobody: resuming it does)."""
    nxt = (
        Delivery.select(Delivery.next_attempt_at)
        .where(progress.claimable())
        .order_by(Delivery.next_attempt_at)
        .first()
    )
    if nxt is not None:
        schedule_wake(nxt.next_attempt_at)
