"""State the rate limiter keeps for one busy key: a key at 1,000,000 requests per hour.

Usage::

    .venv/bin/python bench/limiter.py
    REDIS_URL=redis://127.0.0.1:6379/9 .venv/bin/python bench/limiter.py

1. sends 100,000 hits for one key through ``RateLimiter.hit`` (one client, so it also prints the
   script's round-trip rate) and prints the key's ``MEMORY USAGE``;
2. writes the state that key holds in steady traffic of 1,000,000 requests per hour: every one of
   the ``BUCKETS + 1`` slices the script keeps, each with 1,000,000 / 60 requests, and prints its
   ``MEMORY USAGE`` — the most the limiter ever stores per key, whatever the rate;
3. for comparison builds what the previous algorithm, a sliding-window log, kept for that traffic:
   one sorted-set member (a 24-hex-digit id scored by microseconds) per admitted request.

Target: O(1), a few bytes per key — the figure must not grow with the request rate.
Only the chosen Redis database is flushed. Timings here are measurements, never test assertions.
"""

from __future__ import annotations

import os
import time

from harness import flushed_redis

from app.limits.limiter import BUCKETS, RateLimiter

HITS = 100_000
PER_HOUR = 1_000_000


def sliding_log_bytes(client, hits: int) -> int:  # type: ignore[no-untyped-def]
    """Memory of the old algorithm's state for ``hits`` admitted requests in one window."""
    key = "bench:rl:log"
    now_us = int(time.time() * 1_000_000)
    pipe = client.pipeline(transaction=False)
    for i in range(hits):
        pipe.zadd(key, {os.urandom(12).hex(): now_us + i})
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    size = int(client.memory_usage(key, samples=0))
    client.delete(key)
    return size


def main() -> int:
    _, client = flushed_redis(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9"))
    limiter = RateLimiter(client)
    started = time.perf_counter()
    admitted = 0
    for _ in range(HITS):
        admitted += limiter.hit("busy", 100_000_000).allowed
    elapsed = time.perf_counter() - started
    measured = int(client.memory_usage(limiter.key("busy"), samples=0))
    used = client.hlen(limiter.key("busy"))
    steady_key = limiter.key("steady")
    first_slice = int(time.time()) // (3600 // BUCKETS)
    client.hset(
        steady_key,
        mapping={first_slice + i: PER_HOUR // BUCKETS for i in range(BUCKETS + 1)},
    )
    steady = int(client.memory_usage(steady_key, samples=0))
    log_state = sliding_log_bytes(client, PER_HOUR)
    print(
        f"limiter: {HITS:,} hits, {admitted:,} admitted in {elapsed:.1f} s "
        f"({HITS / elapsed:,.0f} hits/s from one client); state {measured:,} bytes ({used} slices)"
    )
    print(f"{'state per key at 1,000,000 requests/hour':<48} {'bytes':>12}")
    print(f"{'sliding-window log (previous algorithm)':<48} {log_state:>12,}")
    print(f"{f'bucketed sliding window (all {BUCKETS + 1} slices held)':<48} {steady:>12,}")
    verdict = "PASS" if steady < 4096 else "MISS"
    print(f"target: O(1) per key (a few hundred bytes, independent of rate) -> {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
