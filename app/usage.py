"""Cheap per-API-key usage analytics in Redis: hourly counters, no database writes.

Each key gets one hash per hour, ``sb:usage:<key_id>:<epoch_hour>`` (``epoch_hour`` is
``unix_time // 3600``), with integer fields:

- ``2xx``, ``3xx``, ``4xx``, ``5xx``: responses by status class; their sum is the request count
  (1xx are counted as ``2xx``, anything >= 600 as ``5xx``);
- ``rate_limited``: how many of those requests were refused by the rate limiter (they are also
  counted in ``4xx`` as the 429 they got);
- ``gateway_bytes``: response bytes proxied by the gateway.

Every write refreshes an 8-day TTL, so the history is bounded without a cleanup job. Writes and
reads are each one pipelined round trip.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TypedDict

from redis import Redis

__all__ = ["MAX_HOURS", "RETENTION_SECONDS", "UsageBucket", "read", "record"]

HOUR = 3600
RETENTION_SECONDS = 8 * 24 * HOUR
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


def _status_field(status: int) -> str:
    return STATUS_FIELDS[min(max(status // 100, 2), 5) - 2]


def record(
    redis: Redis,
    key_id: str,
    *,
    status: int,
    bytes_out: int = 0,
    rate_limited: bool = False,
    now: float | None = None,
) -> None:
    """Count one request of ``key_id`` in the bucket of the current hour.

    ``bytes_out`` is the gateway's proxied response size; other callers leave it at 0.
    """
    epoch_hour = int((time.time() if now is None else now) // HOUR)
    key = _bucket_key(key_id, epoch_hour)
    pipe = redis.pipeline(transaction=False)
    pipe.hincrby(key, _status_field(status), 1)
    if rate_limited:
        pipe.hincrby(key, "rate_limited", 1)
    if bytes_out > 0:
        pipe.hincrby(key, "gateway_bytes", bytes_out)
    pipe.expire(key, RETENTION_SECONDS)
    pipe.execute()


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


def add_gateway_bytes(redis: Redis, key_id: str, n: int, now: float | None = None) -> None:
    """Add ``n`` proxied bytes to ``key_id``'s current hour (called once a stream ends)."""
    if n <= 0:
        return
    key = _bucket_key(key_id, int((time.time() if now is None else now) // HOUR))
    pipe = redis.pipeline(transaction=False)
    pipe.hincrby(key, "gateway_bytes", n)
    pipe.expire(key, RETENTION_SECONDS)
    pipe.execute()
