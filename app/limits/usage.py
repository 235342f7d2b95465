"""Cheap per-API-key usage analytics in Redis: hourly counters, no database writes.

Each key gets one hash per hour, ``sb:usage:<key_id>:<epoch_hour>`` (``epoch_hour`` is
``unix_time // 3600``), with integer fields:

- ``2xx``, ``3xx``, ``4xx``, ``5xx``: responses by status class; their sum is the request count
  (1xx are counted as ``2xx``, anything >= 600 as ``5xx``);
- ``rate_limited``: how many of those requests were refused by the rate limiter (they are also
  counted in ``4xx`` as the 429 they got);
- ``gateway_bytes``: response bytes proxied by the gateway.

Refused requests are also counted per minute, in ``sb:usage:limited:<epoch_minute>`` (field: the
key id), so alert rules can ask "which keys hit their limit in the last N minutes"
(:func:`rate_limited_keys`).

Each tenant gets one hash per UTC day, ``sb:usage:tenant:<tenant_id>:<epoch_day>``, with
``requests`` (acting in it, platform keys included), ``events`` (every event written to its
outbox), ``deliveries_succeeded``, ``deliveries_failed`` (attempts that ended a delivery) and
``gateway_calls`` — :func:`read_tenant` serves ``/usage``.

Every write refreshes a TTL (8 days for keys' hours, 93 for tenants' days), so the history is
bounded without a cleanup job. Counts are buffered per process and flushed in one pipeline a
second (``UsageBuffer``); reads are one pipelined round trip.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import TypedDict

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

__all__ = ["MAX_HOURS", "RETENTION_SECONDS", "UsageBucket", "UsageBuffer", "read"]

HOUR = 3600
DAY = 24 * HOUR
RETENTION_SECONDS = 8 * 24 * HOUR
TENANT_RETENTION_SECONDS = 93 * DAY
MAX_DAYS = 90
TENANT_FIELDS = (
    "requests",
    "events",
    "deliveries_succeeded",
    "deliveries_failed",
    "gateway_calls",
)
MAX_HOURS = RETENTION_SECONDS // HOUR
STATUS_FIELDS = ("2xx", "3xx", "4xx", "5xx")
FIELDS = (*STATUS_FIELDS, "rate_limited", "gateway_bytes")
PREFIX = "sb:usage:"

UsageBucket = TypedDict(
    "UsageBucket",
    {
        "hour": str,
        "requests": int,
        "2xx": int,
        "3xx": int,
        "4xx": int,
        "5xx": int,
        "rate_limited": int,
        "gateway_bytes": int,
    },
)


def _bucket_key(key_id: str, epoch_hour: int) -> str:
    return f"{PREFIX}{key_id}:{epoch_hour}"


def _tenant_key(tenant_id: str, epoch_day: int) -> str:
    return f"{PREFIX}tenant:{tenant_id}:{epoch_day}"


def _limited_key(epoch_minute: int) -> str:
    return f"{PREFIX}limited:{epoch_minute}"


def _status_field(status: int) -> str:
    return STATUS_FIELDS[min(max(status // 100, 2), 5) - 2]


class UsageBuffer:
    """Per-process usage counters, flushed to Redis in one pipeline every ``interval`` seconds.

    Counting is a dict update under a lock, so metering adds no round trip to a request; every
    process adds its own increments (``HINCRBY``), so totals are exact across processes and
    at most ``interval`` seconds behind. A failed flush keeps the counts for the next one.
    """

    def __init__(self, redis: Redis, interval: float = 1.0) -> None:
        self.redis = redis
        self.interval = interval
        self._counts: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._lock = threading.Lock()
        self._owner_pid: int | None = None
        self._closed = threading.Event()

    def count(
        self,
        key_id: str,
        *,
        status: int,
        rate_limited: bool = False,
        gateway_bytes: int = 0,
        tenant_id: str | None = None,
        now: float | None = None,
    ) -> None:
        """Count one response of ``key_id`` (and proxied bytes) in the current hour, and a
        request of ``tenant_id`` today."""
        at = time.time() if now is None else now
        key = _bucket_key(key_id, int(at // HOUR))
        with self._lock:
            self._counts[(key, _status_field(status))] += 1
            if tenant_id is not None:
                self._counts[(_tenant_key(tenant_id, int(at // DAY)), "requests")] += 1
            if rate_limited:
                self._counts[(key, "rate_limited")] += 1
                self._counts[(_limited_key(int(at // 60)), key_id)] += 1
        if gateway_bytes > 0:
            self.add_bytes(key_id, gateway_bytes, now=now)
        self._ensure_flusher()

    def add_bytes(self, key_id: str, n: int, *, now: float | None = None) -> None:
        """Count ``n`` bytes proxied by the gateway for ``key_id``."""
        key = _bucket_key(key_id, int((time.time() if now is None else now) // HOUR))
        with self._lock:
            self._counts[(key, "gateway_bytes")] += n
        self._ensure_flusher()

    def count_tenant(self, tenant_id: str, field: str, n: int = 1) -> None:
        """Add ``n`` to today's ``field`` (one of :data:`TENANT_FIELDS`) of ``tenant_id``."""
        key = _tenant_key(tenant_id, int(time.time() // DAY))
        with self._lock:
            self._counts[(key, field)] += n
        self._ensure_flusher()

    def flush(self) -> None:
        """Write the pending counts now (one pipeline); on failure keep them for later."""
        with self._lock:
            pending, self._counts = self._counts, defaultdict(int)
        if not pending:
            return
        pipe = self.redis.pipeline(transaction=False)
        for (key, field), n in pending.items():
            pipe.hincrby(key, field, n)
        tenants = f"{PREFIX}tenant:"
        for key in {key for key, _ in pending}:
            pipe.expire(
                key, TENANT_RETENTION_SECONDS if key.startswith(tenants) else RETENTION_SECONDS
            )
        try:
            pipe.execute()
        except RedisError as exc:
            log.warning("usage flush failed, keeping %d counters: %s", len(pending), exc)
            with self._lock:
                for item, n in pending.items():
                    self._counts[item] += n

    def _ensure_flusher(self) -> None:
        # One flusher thread per process (a forked worker starts its own).
        if self._owner_pid == os.getpid():
            return
        with self._lock:
            if self._owner_pid == os.getpid():
                return
            self._owner_pid = os.getpid()
        threading.Thread(target=self._run, name="usage-flusher", daemon=True).start()
        atexit.register(self.flush)

    def _run(self) -> None:
        while not self._closed.wait(self.interval):
            self.flush()

    def close(self) -> None:
        """Stop flushing and drop pending counts (for an app that is being discarded)."""
        self._closed.set()
        atexit.unregister(self.flush)


def rate_limited_keys(
    redis: Redis, window_seconds: int, now: float | None = None
) -> dict[str, int]:
    """Requests refused by rate limits per key id in the last ``window_seconds`` (by minute)."""
    current = int((time.time() if now is None else now) // 60)
    minutes = range(current - max(1, window_seconds // 60) + 1, current + 1)
    pipe = redis.pipeline(transaction=False)
    for minute in minutes:
        pipe.hgetall(_limited_key(minute))
    totals: defaultdict[str, int] = defaultdict(int)
    for raw in pipe.execute():
        for key_id, n in raw.items():
            totals[key_id.decode() if isinstance(key_id, bytes) else key_id] += int(n)
    return dict(totals)


def read(redis: Redis, key_id: str, hours: int, now: float | None = None) -> list[UsageBucket]:
    """Return the last ``hours`` hourly buckets of ``key_id``, oldest first, zero-filled.

    The newest bucket is the current (partial) hour. ``hours`` must be 1..``MAX_HOURS``.
    """
    if not 1 <= hours <= MAX_HOURS:
        raise ValueError(f"hours must be between 1 and {MAX_HOURS}")
    current = int((time.time() if now is None else now) // HOUR)
    epoch_hours = range(current - hours + 1, current + 1)
    pipe = redis.pipeline(transaction=False)
    for epoch_hour in epoch_hours:
        pipe.hgetall(_bucket_key(key_id, epoch_hour))
    results = pipe.execute()

    buckets: list[UsageBucket] = []
    for epoch_hour, raw in zip(epoch_hours, results, strict=True):
        # Works whether or not the client was created with decode_responses=True.
        values = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
        counts = {field: values.get(field, 0) for field in FIELDS}
        buckets.append(
            {
                "hour": datetime.fromtimestamp(epoch_hour * HOUR, UTC)
                .isoformat()
                .replace("+00:00", "Z"),
                "requests": sum(counts[field] for field in STATUS_FIELDS),
                "2xx": counts["2xx"],
                "3xx": counts["3xx"],
                "4xx": counts["4xx"],
                "5xx": counts["5xx"],
                "rate_limited": counts["rate_limited"],
                "gateway_bytes": counts["gateway_bytes"],
            }
        )
    return buckets


def read_tenant(
    redis: Redis, tenant_id: str, days: int, now: float | None = None
) -> list[dict[str, int | str]]:
    """The last ``days`` (1..``MAX_DAYS``) UTC days of ``tenant_id``'s usage, oldest first,
    zero-filled; the newest is today (partial)."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be between 1 and {MAX_DAYS}")
    today = int((time.time() if now is None else now) // DAY)
    epoch_days = range(today - days + 1, today + 1)
    pipe = redis.pipeline(transaction=False)
    for epoch_day in epoch_days:
        pipe.hgetall(_tenant_key(tenant_id, epoch_day))
    result: list[dict[str, int | str]] = []
    for epoch_day, raw in zip(epoch_days, pipe.execute(), strict=True):
        values = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
        day = datetime.fromtimestamp(epoch_day * DAY, UTC).date().isoformat()
        result.append({"date": day, **{field: values.get(field, 0) for field in TENANT_FIELDS}})
    return result


def forget_tenant(redis: Redis, tenant_id: str) -> None:
    """Delete every usage counter of ``tenant_id`` (its erasure)."""
    for key in redis.scan_iter(match=f"{PREFIX}tenant:{tenant_id}:*", count=1000):
        redis.delete(key)
