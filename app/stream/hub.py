"""One reader of the Redis Stream per process, fanning entries out to that process's clients.

However many clients a process serves, it holds one blocking ``XREAD`` (in a thread, which is
a greenlet under gevent), reading at most about :data:`READ_BYTES` per round. Each client has a
bounded buffer: a client that falls ``SWITCHBOARD_STREAM_CLIENT_BUFFER`` entries or
``SWITCHBOARD_STREAM_CLIENT_BUFFER_BYTES`` behind is dropped rather than buffered without bound:
its buffer is emptied at once, its stream ends with a ``stream.gap`` notice naming the last
entry it got, and if it does not read even that within :data:`DROP_GRACE` seconds its socket is
shut down (so a write blocked on it ends). It reconnects with ``Last-Event-ID`` and catches up
from Redis without a gap. The hub also follows the auth epoch so that open streams re-check
their key soon after any key changes, and renews the stream slots (:mod:`app.stream.slots`) of
its clients.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from flask import Flask

from app.metrics import instruments as metrics
from app.store.redis import connect
from app.stream.publish import STREAM_KEY
from app.stream.slots import RENEW_EVERY, Slot, release, renew

log = logging.getLogger(__name__)

AUTH_EPOCH = "sb:auth:epoch"  # bumped by app.auth.access on any key change
BLOCK_MS = 1000
READ_COUNT = 500
READ_BYTES = 4 << 20  # entries read per round are cut to about this many bytes of data
DROP_GRACE = 10.0  # seconds a dropped client has to take its notice before its socket is shut


@dataclass(frozen=True)
class StreamEntry:
    """One entry as read from Redis; ``data`` stays the JSON text it was written as."""

    id: str
    tenant_id: str
    kind: str
    scope: str
    integration_id: str
    webhook_id: str
    event_type: str
    data: str


def entry_id_key(entry_id: str) -> tuple[int, int]:
    """An entry id (``<ms>-<seq>``) as a sortable pair; raises ValueError if malformed."""
    ms, _, seq = entry_id.partition("-")
    if not ms.isdigit() or not seq.isdigit() or len(entry_id) > 41:
        raise ValueError(entry_id)
    return int(ms), int(seq)


def parse_entry(entry_id: Any, fields: Any) -> StreamEntry:
    """A raw ``XREAD``/``XRANGE`` item as a :class:`StreamEntry`."""

    def text(name: str) -> str:
        value = fields.get(name.encode(), fields.get(name, b""))
        return value.decode() if isinstance(value, bytes) else str(value)

    raw_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return StreamEntry(
        raw_id, text("t"), text("k"), text("s"), text("i"), text("w"), text("e"), text("d")
    )


@dataclass(frozen=True)
class BufferLimit:
    """How far one client may fall behind: entries and bytes of entry data (one entry, however
    large, always fits an empty buffer)."""

    entries: int
    size: int


class Subscriber:
    """One client's buffer of entries waiting to be written (only those it ``accepts``)."""

    def __init__(
        self,
        limit: BufferLimit,
        sock: socket.socket | None,
        accepts: Callable[[StreamEntry], bool],
        slot: Slot | None = None,
        drop_grace: float = DROP_GRACE,
    ) -> None:
        self.limit = limit
        self.drop_grace = drop_grace
        self.sock = sock
        self.accepts = accepts
        self.slot = slot
        self.entries: deque[StreamEntry] = deque()
        self.size = 0
        self.wake = threading.Event()
        self.dropped_at: float | None = None
        self.cut_off = False

    @property
    def dropped(self) -> bool:
        return self.dropped_at is not None

    def offer(self, entry: StreamEntry) -> None:
        # Filtered here, in the reader: a client that wants none of it is not even woken.
        if self.dropped or not self.accepts(entry):
            return
        if self.entries and (
            len(self.entries) >= self.limit.entries or self.size + len(entry.data) > self.limit.size
        ):
            self.dropped_at = time.monotonic()
            self.entries.clear()
            self.size = 0
            metrics.stream_connection("dropped", "slow")
        else:
            self.entries.append(entry)
            self.size += len(entry.data)
        self.wake.set()

    def take(self, timeout: float) -> list[StreamEntry]:
        """Entries buffered so far, waiting up to ``timeout`` seconds for the first."""
        if not self.entries and not self.dropped:
            self.wake.wait(timeout)
        self.wake.clear()
        taken = []
        while self.entries:
            entry = self.entries.popleft()
            self.size -= len(entry.data)
            taken.append(entry)
        return taken

    def shut_down_if_stuck(self, now: float) -> None:
        """Shut the socket of a client dropped over ``drop_grace`` seconds ago that is still
        here: a write blocked on a client that stopped reading ends."""
        if self.dropped_at is None or self.cut_off or now - self.dropped_at < self.drop_grace:
            return
        self.cut_off = True
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Hub:
    """This process's stream reader and its subscribers."""

    def __init__(
        self, client: redis.Redis, buffer_limit: BufferLimit, drop_grace: float = DROP_GRACE
    ) -> None:
        self.client = client
        self.buffer_limit = buffer_limit
        self.drop_grace = drop_grace
        self.read_count = READ_COUNT
        self._freed = False  # buffers were let go since memory was last handed back
        self.subscribers: set[Subscriber] = set()
        self.lock = threading.Lock()
        self.last_id = "0-0"
        self.epoch: str | None = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(
        self,
        sock: socket.socket | None = None,
        accepts: Callable[[StreamEntry], bool] = lambda entry: True,
        slot: Slot | None = None,
    ) -> tuple[Subscriber, str]:
        """Register a client (holding ``slot``); returns it and the id after which live entries
        reach it."""
        self._ready.wait(10)
        subscriber = Subscriber(self.buffer_limit, sock, accepts, slot, self.drop_grace)
        with self.lock:
            self.subscribers.add(subscriber)
            return subscriber, self.last_id

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Forget a client and give its stream slot back."""
        with self.lock:
            self.subscribers.discard(subscriber)
            self._freed = True
        if subscriber.slot is not None:
            release(self.client, subscriber.slot)

    def client_count(self) -> int:
        return len(self.subscribers)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stream-hub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        last_epoch_read = last_renewal = 0.0
        while not self._stopped.is_set():
            try:
                if not self._ready.is_set():
                    newest: Any = self.client.xrevrange(STREAM_KEY, count=1)
                    self.last_id = newest[0][0].decode() if newest else "0-0"
                    self._ready.set()
                now = time.monotonic()
                if now - last_epoch_read >= 1.0:
                    epoch = self.client.get(AUTH_EPOCH)
                    self.epoch = epoch.decode() if isinstance(epoch, bytes) else epoch
                    last_epoch_read = now
                    renew_slots = now - last_renewal >= RENEW_EVERY
                    self._tend(now, renew_slots)
                    if renew_slots:
                        last_renewal = now
                batches: Any = self.client.xread(
                    {STREAM_KEY: self.last_id}, count=self.read_count, block=BLOCK_MS
                )
            except redis.RedisError as exc:
                if self._stopped.is_set():  # its connection was closed to stop it
                    return
                log.warning("live stream: reading Redis failed (%s); retrying in 1 s", exc)
                self._stopped.wait(1.0)
                continue
            for _, items in batches or ():
                entries = [parse_entry(entry_id, fields) for entry_id, fields in items]
                with self.lock:
                    for entry in entries:
                        for subscriber in self.subscribers:
                            subscriber.offer(entry)
                    self.last_id = entries[-1].id
                average = sum(len(entry.data) for entry in entries) / len(entries)
                self.read_count = max(1, min(READ_COUNT, int(READ_BYTES / max(average, 1))))
            del batches  # while XREAD blocks, only the buffers hold what clients still need

    def _tend(self, now: float, renew_slots: bool) -> None:
        """Shut stuck dropped clients out; with ``renew_slots``, extend the slots' leases."""
        with self.lock:
            subscribers = list(self.subscribers)
        for subscriber in subscribers:
            subscriber.shut_down_if_stuck(now)
        if self._freed or any(s.dropped for s in subscribers):
            self._freed = False
            return_memory()
        slots = [s.slot for s in subscribers if s.slot is not None]
        if renew_slots and slots:
            renew(self.client, slots)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_trim = _malloc_trim()


def return_memory() -> None:
    """Hand the heap's free pages back to the system (glibc keeps them otherwise: buffers of
    large entries, once let go, would leave the process at its peak size)."""
    if _trim is not None:
        _trim(0)


_hub_lock = threading.Lock()


def get_hub(app: Flask) -> Hub:
    """This process's hub for ``app``, started on first use (again in a forked child)."""
    with _hub_lock:
        hub: Hub | None = app.extensions.get("stream_hub")
        if hub is None or app.extensions.get("stream_hub_pid") != os.getpid():
            limit = BufferLimit(
                app.config["STREAM_CLIENT_BUFFER"], app.config["STREAM_CLIENT_BUFFER_BYTES"]
            )
            hub = Hub(connect(app), limit)
            hub.start()
            app.extensions["stream_hub"] = hub
            app.extensions["stream_hub_pid"] = os.getpid()
        return hub
