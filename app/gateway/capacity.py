"""Bounded concurrency for the gateway: what one process lets wait on upstreams at once.

Two bounds, both per process, both refusing with an immediate ``503`` (problem+json with
``Retry-After``) rather than queueing without end:

- **per upstream**: the gateway's connection pool keeps at most
  ``SWITCHBOARD_GATEWAY_UPSTREAM_CONNECTIONS`` connections to one upstream (scheme, host and
  port), all reused (keep-alive). A request that finds them all busy waits up to
  ``SWITCHBOARD_GATEWAY_QUEUE_SECONDS`` for one to come back, then is refused ("upstream
  saturated"; another upstream of the pool is tried first).
- **per integration**: at most ``SWITCHBOARD_GATEWAY_MAX_IN_FLIGHT`` requests of one
  integration are in flight (from the lookup until the last byte of the answer).

Each refusal is counted in ``switchboard_gateway_refused_total`` by reason.

A slow client must not pin an upstream connection either: ``bound_client_waits`` makes every
read from and write to the client's socket give up after the upstream's timeout.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from flask import Flask

from app.outbound.guard import GuardedSession, make_session
from app.outbound.session import USER_AGENT

__all__ = ["ClientWaits", "InFlight", "bound_client_waits", "gateway_session", "in_flight"]


def gateway_session(app: Flask, allowed_networks: tuple) -> GuardedSession:
    """The app's guarded session for proxied requests: a blocking pool, capped per upstream."""
    session: GuardedSession | None = app.extensions.get("gateway_session")
    if session is None:
        session = app.extensions.setdefault(
            "gateway_session",
            make_session(
                allowed_networks,
                pool_maxsize=int(app.config["GATEWAY_UPSTREAM_CONNECTIONS"]),
                pool_block=True,
                user_agent=USER_AGENT,
            ),
        )
    return session


class InFlight:
    """Counts the requests in flight per integration; refuses past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def enter(self, integration_id: str) -> bool:
        """Count one more request of ``integration_id``; False (not counted) at the limit."""
        with self._lock:
            count = self._counts.get(integration_id, 0)
            if count >= self.limit:
                return False
            self._counts[integration_id] = count + 1
            return True

    def leave(self, integration_id: str) -> None:
        """One request of ``integration_id`` ended."""
        with self._lock:
            count = self._counts.get(integration_id, 0) - 1
            if count > 0:
                self._counts[integration_id] = count
            else:
                self._counts.pop(integration_id, None)


def in_flight(app: Flask) -> InFlight:
    """The app's per-integration in-flight counter."""
    counter: InFlight | None = app.extensions.get("gateway_in_flight")
    if counter is None:
        counter = app.extensions.setdefault(
            "gateway_in_flight", InFlight(int(app.config["GATEWAY_MAX_IN_FLIGHT"]))
        )
    return counter


class ClientWaits:
    """Bounds each wait on the client's socket of one request; ``restore`` undoes it."""

    def __init__(self, sock: socket.socket | None, timeout: float) -> None:
        self.sock = sock
        self.previous: float | None = None
        if sock is not None:
            self.previous = sock.gettimeout()
            sock.settimeout(timeout)

    def restore(self) -> None:
        """Give the socket back its own timeout (the server reads the next request with it)."""
        if self.sock is not None:
            try:
                self.sock.settimeout(self.previous)
            except OSError:  # the client is gone and the socket closed
                pass
            self.sock = None


def bound_client_waits(environ: dict[str, Any], timeout: float) -> ClientWaits:
    """Make each read of the client's body and each write of the answer to it give up after
    ``timeout`` seconds (the upstream's timeout), so a slow or stalled client cannot hold an
    upstream connection longer. Needs the socket (gunicorn's ``gunicorn.socket``); elsewhere
    (the Flask test client) a no-op."""
    sock = environ.get("gunicorn.socket")
    return ClientWaits(sock if isinstance(sock, socket.socket) else None, timeout)
