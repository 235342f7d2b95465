"""Worker liveness: every worker process heartbeats into Redis; ``/ready`` reads who is live.

A sorted set maps worker name → time of its last heartbeat, and a hash keeps what the worker
said about itself (pid, host, start time, state). Both are rewritten on every beat, so after
Redis restarts empty the workers reappear within one heartbeat interval. Entries of workers
that stopped beating long ago are dropped when read.
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import redis

BEATS_KEY = "sb:workers:beats"
INFO_KEY = "sb:workers:info"
#: Entries older than this are removed when the registry is read.
FORGET_AFTER = 24 * 3600


def beat(client: redis.Redis, name: str, info: dict[str, Any]) -> None:
    """Record that worker ``name`` is alive now, with ``info`` about it."""
    with client.pipeline(transaction=False) as pipe:
        pipe.zadd(BEATS_KEY, {name: time.time()})
        pipe.hset(INFO_KEY, name, json.dumps(info))
        pipe.execute()


def forget(client: redis.Redis, name: str) -> None:
    """Remove worker ``name`` (it stopped cleanly)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.zrem(BEATS_KEY, name)
        pipe.hdel(INFO_KEY, name)
        pipe.execute()


def last_beat(client: redis.Redis, name: str) -> float | None:
    """Unix time of worker ``name``'s last heartbeat; None if it never beat or was forgotten."""
    score = client.zscore(BEATS_KEY, name)
    return None if score is None else float(score)


def live_workers(client: redis.Redis, stale_after: float) -> list[dict[str, Any]]:
    """Workers that beat within ``stale_after`` seconds, most recent first."""
    now = time.time()
    forgotten = client.zrangebyscore(BEATS_KEY, "-inf", now - FORGET_AFTER)
    if forgotten:
        client.zrem(BEATS_KEY, *forgotten)
        client.hdel(INFO_KEY, *forgotten)
    beats = cast(
        list[tuple[bytes, float]],
        client.zrevrangebyscore(BEATS_KEY, "+inf", now - stale_after, withscores=True),
    )
    if not beats:
        return []
    infos = client.hmget(INFO_KEY, [name for name, _ in beats])
    workers = []
    for (name, at), raw in zip(beats, infos, strict=True):
        info = json.loads(raw) if raw else {}
        workers.append(
            {
                "name": name.decode(),
                "last_heartbeat_age": round(max(0.0, now - at), 1),
                **info,
            }
        )
    return workers
