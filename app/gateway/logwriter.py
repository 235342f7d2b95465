"""Gateway request logs, written off the request path in batches.

A proxied request used to pay for its own ``integration_logs`` INSERT and commit (about an
eighth of its cost, and on SQLite a turn at the single write lock). Instead it hands the row to
this per-process writer and returns; a background thread writes whatever has queued up in one
multi-row INSERT per transaction, every ``SWITCHBOARD_GATEWAY_LOG_FLUSH_INTERVAL`` seconds (0.2)
or as soon as ``batch`` rows wait.

Nothing is lost on the way:

- the row is built (id, ``created_at``) when the request finishes, so its place in history is
  the request's, not the flush's;
- a failed write (database restarting, locked) keeps the rows and retries at the next tick;
- a graceful exit (gunicorn stopping a worker, ``SIGTERM``) flushes what is queued (``atexit``);
- the queue is bounded (``max_pending``): past it, the request writes its own row inline, so a
  stalled database slows proxying down instead of growing memory.

Two cases lose rows: a ``SIGKILL`` (at most one interval's rows of that process — the price of
not waiting for the disk on every proxied request, stated in docs/gateway.md), and a database outage
long enough to fill the queue (the inline write fails too; each lost row is logged at
``ERROR``). ``log.created`` stream entries are announced after the rows commit.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any

from flask import Flask

from app.store.db import database
from app.store.models import IntegrationLog
from app.stream import kinds

log = logging.getLogger(__name__)

__all__ = ["GatewayLogWriter", "gateway_log_writer"]


class GatewayLogWriter:
    """Queue of unwritten gateway log rows with one flusher thread per process."""

    def __init__(
        self, app: Flask, *, interval: float, batch: int = 200, max_pending: int = 10_000
    ) -> None:
        self.app = app
        self.interval = interval
        self.batch = batch
        self.max_pending = max_pending
        self._pending: list[IntegrationLog] = []
        self._lock = threading.Lock()  # guards _pending
        self._flushing = threading.Lock()  # one writer at a time keeps rows in order
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._owner_pid: int | None = None

    def add(self, **fields: Any) -> None:
        """Queue one log row (written within ``interval``); inline if the queue is full."""
        row = IntegrationLog(**fields)
        with self._lock:
            full = len(self._pending) >= self.max_pending
            if not full:
                self._pending.append(row)
                due = len(self._pending) >= self.batch
        if full:
            if not self._write([row]):
                log.error("gateway log queue full and the database unavailable: 1 row lost")
            return
        self._ensure_flusher()
        if due:
            self._wake.set()

    def flush(self) -> None:
        """Write every queued row now; on failure keep them (in order) for the next flush."""
        with self._flushing:
            while True:
                with self._lock:
                    rows, self._pending = self._pending[: self.batch], self._pending[self.batch :]
                if not rows:
                    return
                if not self._write(rows):
                    with self._lock:
                        self._pending[:0] = rows
                    return

    def _write(self, rows: list[IntegrationLog]) -> bool:
        try:
            with self.app.app_context(), database.connection_context():
                with database.atomic():
                    IntegrationLog.bulk_create(rows, batch_size=100)
                for row in rows:
                    kinds.log_created(row.to_dict())
        except Exception as exc:  # noqa: BLE001 - the database may be away; retry next tick
            log.warning("gateway log write failed, keeping %d rows: %s", len(rows), exc)
            return False
        return True

    def _ensure_flusher(self) -> None:
        # One flusher thread per process (a forked gunicorn worker starts its own).
        if self._owner_pid == os.getpid():
            return
        with self._lock:
            if self._owner_pid == os.getpid():
                return
            self._owner_pid = os.getpid()
        threading.Thread(target=self._run, name="gateway-log-writer", daemon=True).start()
        atexit.register(self.flush)

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        """Write what is queued and stop the flusher (for an app that is being discarded)."""
        self._closed.set()
        self._wake.set()
        self.flush()


def gateway_log_writer(app: Flask) -> GatewayLogWriter:
    """The app's writer, created on first use."""
    writer: GatewayLogWriter | None = app.extensions.get("gateway_log_writer")
    if writer is None:
        writer = app.extensions.setdefault(
            "gateway_log_writer",
            GatewayLogWriter(app, interval=float(app.config["GATEWAY_LOG_FLUSH_INTERVAL"])),
        )
    return writer
