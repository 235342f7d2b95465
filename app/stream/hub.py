"""One reader of the Redis Stream per process, fanning entries out to that process's clients.

However many clients a process serves, it holds one blocking ``XREAD`` (in a thread, which is
a greenlet under gevent). Each client has a bounded buffer: a client that falls
``SWITCHBOARD_STREAM_CLIENT_BUFFER`` entries behind is dropped (its socket shut down, so a
write blocked on it ends) rather than buffered without bound; it reconnects with
``Last-Event-ID`` and catches up from Redis without a gap. The hub also follows the auth epoch
so that open streams re-check their key soon after any key changes.
"""

from __future__ import annotations

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

from app.store.redis import connect
from app.stream.publish import STREAM_KEY

log = logging.getLogger(__name__)

AUTH_EPOCH = "sb:auth:epoch"  # bumped by app.auth.access on any key change
BLOCK_MS = 1000
READ_COUNT = 500


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


class Subscriber:
    """One client's buffer of entries waiting to be written (only those it ``accepts``)."""

    def __init__(
        self, limit: int, sock: socket.socket | None, accepts: Callable[[StreamEntry], bool]
    ) -> None:
        self.limit = limit
        self.sock = sock
        self.accepts = accepts
        self.entries: deque[StreamEntry] = deque()
        self.wake = threading.Event()
        self.dropped = False

    def offer(self, entry: StreamEntry) -> None:
        # Filtered here, in the reader: a client that wants none of it is not even woken.
        if self.dropped or not self.accepts(entry):
            return
        if len(self.entries) >= self.limit:
            self.dropped = True
            self.entries.clear()
            if self.sock is not None:  # ends a write blocked on a client that stopped reading
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        else:
            self.entries.append(entry)
        self.wake.set()

    def take(self, timeout: float) -> list[StreamEntry]:
        """Entries buffered so far, waiting up to ``timeout`` seconds for the first."""
        if not self.entries and not self.dropped:
            self.wake.wait(timeout)
        self.wake.clear()
        taken = []
        while self.entries:
            taken.append(self.entries.popleft())
        return taken


class Hub:
    """This process's stream reader and its subscribers."""

    def __init__(self, client: redis.Redis, buffer_limit: int) -> None:
        self.client = client
        self.buffer_limit = buffer_limit
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
    ) -> tuple[Subscriber, str]:
        """Register a client; returns it and the id after which live entries reach it."""
        self._ready.wait(10)
        subscriber = Subscriber(self.buffer_limit, sock, accepts)
        with self.lock:
            self.subscribers.add(subscriber)
            return subscriber, self.last_id

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self.lock:
            self.subscribers.discard(subscriber)

    def client_count(self) -> int:
        return len(self.subscribers)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stream-hub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        last_epoch_read = 0.0
        while not self._stopped.is_set():
            try:
                if not self._ready.is_set():
                    newest: Any = self.client.xrevrange(STREAM_KEY, count=1)
                    self.last_id = newest[0][0].decode() if newest else "0-0"
                    self._ready.set()
                if time.monotonic() - last_epoch_read >= 1.0:
                    epoch = self.client.get(AUTH_EPOCH)
                    self.epoch = epoch.decode() if isinstance(epoch, bytes) else epoch
                    last_epoch_read = time.monotonic()
                batches: Any = self.client.xread(
                    {STREAM_KEY: self.last_id}, count=READ_COUNT, block=BLOCK_MS
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


_hub_lock = threading.Lock()


def get_hub(app: Flask) -> Hub:
    """This process's hub for ``app``, started on first use (again in a forked child)."""
    with _hub_lock:
        hub: Hub | None = app.extensions.get("stream_hub")
        if hub is None or app.extensions.get("stream_hub_pid") != os.getpid():
            hub = Hub(connect(app), app.config["STREAM_CLIENT_BUFFER"])
            hub.start()
            app.extensions["stream_hub"] = hub
            app.extensions["stream_hub_pid"] = os.getpid()
        return hub
