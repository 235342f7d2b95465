"""Publishing to the live stream: a Redis Stream every process appends to.

``publish`` costs the caller a deque append: a background thread per process writes queued
entries to Redis in pipelines as soon as they arrive (so a request or a delivery never waits
on the stream), and entries published inside a database transaction are queued only once it
commits — a rolled-back change is never announced. The stream is a live view, not the record
(that is the database): if Redis cannot take entries they are dropped and counted
(``switchboard_stream_entries_total{outcome="dropped"}``).

Retention: entries older than ``SWITCHBOARD_STREAM_RETENTION`` seconds, and any beyond
``SWITCHBOARD_STREAM_MAX_ENTRIES``, are trimmed about once a second; the id of the newest entry
trimming removed is kept in :data:`TRIMMED_KEY`, so a client resuming from an older id learns
that it missed entries (see :mod:`app.stream.session`). A Redis that restarts empty loses the
stream without trimming it: :data:`ORIGIN_KEY` holds an id (by the Redis clock) no later than
the first entry written since the stream was last created, so a client resuming from an older
id learns that the entries in between may be lost.

Each entry has the fields ``t`` (the tenant it belongs to: only that tenant's readers see it),
``k`` (kind: ``delivery.attempted``…), ``s`` (the scope a key needs to see it), ``i``/``w``
(integration and webhook id, for filters), ``e`` (the domain event type, when it concerns one)
and ``d`` (the JSON data).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import redis
from flask import Flask, current_app

from app.metrics import instruments as metrics
from app.store import jsoncodec
from app.store.db import database
from app.store.redis import connect

log = logging.getLogger(__name__)

STREAM_KEY = "sb:stream"
TRIMMED_KEY = "sb:stream:trimmed"
ORIGIN_KEY = "sb:stream:origin"
QUEUE_LIMIT = 20_000  # entries waiting for Redis in one process; the oldest are dropped beyond
BATCH = 500
TRIM_EVERY = 1.0  # seconds
TRIM_CHUNK = 10_000  # most entries one trim removes for the length cap (it runs again soon)

# KEYS[1] stream, KEYS[2] trimmed marker; ARGV[1] oldest id kept by age, ARGV[2] max entries,
# ARGV[3] most entries removed for the length cap. Returns the newest removed id, or false.
_TRIM_LUA = """
local function after(id)
    local ms, seq = string.match(id, '(%d+)-(%d+)')
    return ms .. '-' .. (tonumber(seq) + 1)
end
local removed = false
local older = redis.call('XREVRANGE', KEYS[1], '(' .. ARGV[1], '-', 'COUNT', 1)
if #older > 0 then
    removed = older[1][1]
    redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
end
local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[2])
if excess > 0 then
    local count = math.min(excess, tonumber(ARGV[3]))
    local cut = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', count)
    removed = cut[#cut][1]
    redis.call('XTRIM', KEYS[1], 'MINID', after(removed))
end
if removed then
    redis.call('SET', KEYS[2], removed)
end
return removed
"""


# KEYS[1] origin marker. Sets it, unless set, to the Redis clock's "<ms>-0": no later than any
# entry added after it (stream ids are never below the server's time).
_ORIGIN_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', KEYS[1], (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) .. '-0')
end
"""


@dataclass(frozen=True)
class Entry:
    """One stream entry before it is written."""

    tenant_id: str
    kind: str
    scope: str
    data: dict[str, Any]
    integration_id: str | None = None
    webhook_id: str | None = None
    event_type: str | None = None

    def fields(self) -> dict[str, str]:
        return {
            "t": self.tenant_id,
            "k": self.kind,
            "s": self.scope,
            "i": self.integration_id or "",
            "w": self.webhook_id or "",
            "e": self.event_type or "",
            "d": jsoncodec.dumps(self.data, default=str, separators=(",", ":")),
        }


class Publisher:
    """This process's queue of entries and the thread that writes them to Redis."""

    def __init__(self, client: redis.Redis, retention: int, max_entries: int) -> None:
        self.client = client
        self.retention = retention
        self.max_entries = max_entries
        self._queue: deque[Entry] = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._trim = client.register_script(_TRIM_LUA)
        self._origin = client.register_script(_ORIGIN_LUA)
        self._last_trim = 0.0
        self._owner: int | None = None
        self._closed = threading.Event()

    def put(self, entry: Entry) -> None:
        """Queue ``entry``; the writer thread is started (again, after a fork) on first use."""
        if self._owner != os.getpid():
            self._start()
        with self._lock:
            if len(self._queue) >= QUEUE_LIMIT:
                self._queue.popleft()
                metrics.stream_entries("dropped", 1)
            self._queue.append(entry)
        self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._owner == os.getpid():
                return
            self._owner = os.getpid()
            self._queue.clear()  # a forked child does not send its parent's entries
        threading.Thread(target=self._run, name="stream-publisher", daemon=True).start()

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(TRIM_EVERY)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        """Write what is queued and stop the writer thread (the app is being discarded)."""
        self.flush()
        self._closed.set()
        self._wake.set()

    def flush(self) -> None:
        """Write everything queued (and trim when due); errors drop the batch, never raise."""
        while True:
            with self._lock:
                batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            trim = time.monotonic() - self._last_trim >= TRIM_EVERY
            if not batch and not trim:
                return
            try:
                pipe = self.client.pipeline(transaction=False)
                if batch:
                    self._origin(keys=[ORIGIN_KEY], client=pipe)
                for entry in batch:
                    pipe.xadd(STREAM_KEY, entry.fields())  # type: ignore[arg-type]
                if trim:
                    oldest_kept = f"{int((time.time() - self.retention) * 1000)}-0"
                    self._trim(
                        keys=[STREAM_KEY, TRIMMED_KEY],
                        args=[oldest_kept, self.max_entries, TRIM_CHUNK],
                        client=pipe,
                    )
                    self._last_trim = time.monotonic()
                pipe.execute()
                if batch:
                    metrics.stream_entries("published", len(batch))
            except redis.RedisError as exc:
                log.warning("live stream: %d entries dropped, Redis failed: %s", len(batch), exc)
                metrics.stream_entries("dropped", len(batch))
                return
            if len(batch) < BATCH:
                return


def get_publisher(app: Flask | None = None) -> Publisher:
    """The app's publisher, made on first use."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    publisher: Publisher | None = app.extensions.get("stream_publisher")
    if publisher is None:
        publisher = app.extensions["stream_publisher"] = Publisher(
            connect(app), app.config["STREAM_RETENTION"], app.config["STREAM_MAX_ENTRIES"]
        )
    return publisher


#: Entries read per page when looking for entries to delete.
DELETE_PAGE = 1000


def delete_entries(client: redis.Redis, wanted: Any) -> int:
    """Delete every stream entry whose fields (decoded to ``str``) ``wanted`` accepts: what an
    erasure removes from the live view too. Returns how many."""
    deleted, cursor = 0, "-"
    while True:
        page: Any = client.xrange(STREAM_KEY, min=cursor, max="+", count=DELETE_PAGE)
        if not page:
            return deleted
        doomed = [entry_id for entry_id, fields in page if wanted(_decoded(fields))]
        if doomed:
            deleted += int(client.xdel(STREAM_KEY, *doomed))
        last = page[-1][0]
        if len(page) < DELETE_PAGE:
            return deleted
        cursor = "(" + (last.decode() if isinstance(last, bytes) else str(last))


def _decoded(fields: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in fields.items()
    }


def publish(
    kind: str,
    data: dict[str, Any],
    *,
    tenant_id: str,
    scope: str,
    integration_id: str | None = None,
    webhook_id: str | None = None,
    event_type: str | None = None,
) -> None:
    """Announce ``kind`` to ``tenant_id``'s stream readers holding ``scope``, once this
    transaction commits."""
    entry = Entry(tenant_id, kind, scope, data, integration_id, webhook_id, event_type)
    publisher = get_publisher()
    if database.in_transaction():
        database.after_commit(lambda: publisher.put(entry))
    else:
        publisher.put(entry)
