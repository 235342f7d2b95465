"""One client's stream: catch up from ``Last-Event-ID``, then live entries, heartbeats, re-checks.

Resuming: entries after the client's last id are read from Redis (``XRANGE``, in pages) up to
the point where the hub's live entries take over, and live entries not newer than what was
already sent are skipped — so a reconnect sees no gap and no duplicate. When the last id is
older than what retention kept, or than the stream itself (Redis restarted empty since), a
``stream.gap`` event says so before the rest.

A client that fell too far behind (see :mod:`app.stream.hub`) gets a ``stream.gap`` notice
with ``reason: slow_client`` and the id to resume from, and its stream ends.

Every entry is checked against the key's scopes and the client's filters before it is sent.
When the auth epoch moves (a key was revoked, rotated, changed), or the key's expiry or the
grace period of the secret the stream was opened with passes, the key is loaded again: a key,
or a secret, that is no longer valid ends the stream with a ``stream.closed`` event.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import redis
from flask import Flask

from app.auth.access import Principal
from app.metrics import instruments as metrics
from app.store import jsoncodec
from app.store.db import database
from app.store.models import ApiKey, utcnow
from app.store.redis import connect
from app.stream.access import principal_for_key, secret_valid_until
from app.stream.hub import Hub, StreamEntry, Subscriber, entry_id_key, parse_entry
from app.stream.kinds import pattern_matches
from app.stream.publish import ORIGIN_KEY, STREAM_KEY, TRIMMED_KEY
from app.web.problems import Problem

CATCH_UP_PAGE = 200
RECONNECT_MS = 3000


@dataclass(frozen=True)
class Filters:
    """What the client asked for: patterns over the kind and the event type, and ids."""

    types: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    integration_id: str | None = None
    webhook_id: str | None = None

    def admit(self, entry: StreamEntry) -> bool:
        if self.types and not any(pattern_matches(p, entry.kind) for p in self.types):
            return False
        if self.event_types and not (
            entry.event_type and any(pattern_matches(p, entry.event_type) for p in self.event_types)
        ):
            return False
        if self.integration_id and entry.integration_id != self.integration_id:
            return False
        return not (self.webhook_id and entry.webhook_id != self.webhook_id)


def message(entry: StreamEntry) -> str:
    """The SSE message for an entry (its id is the Redis entry id)."""
    return f"id: {entry.id}\nevent: {entry.kind}\ndata: {entry.data}\n\n"


def _control(kind: str, data: dict[str, object]) -> str:
    return f"event: {kind}\ndata: {jsoncodec.dumps(data, separators=(',', ':'))}\n\n"


def _gap(client: redis.Redis, last_event_id: str) -> dict[str, str | None]:
    """Why entries after ``last_event_id`` may be missing; empty when none are.

    ``trimmed_through``: retention removed entries up to that id. ``stream_started``: the
    stream was created anew at that id (null: nothing was written since), so entries from
    before it were lost with Redis.
    """
    try:
        trimmed, origin = client.mget([TRIMMED_KEY, ORIGIN_KEY])
    except redis.RedisError:
        return {}
    resumed = entry_id_key(last_event_id)
    gap: dict[str, str | None] = {}
    if trimmed is not None and resumed < entry_id_key(_text(trimmed)):
        gap["trimmed_through"] = _text(trimmed)
    if origin is None:
        gap["stream_started"] = None
    elif resumed < entry_id_key(_text(origin)):
        gap["stream_started"] = _text(origin)
    return gap


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class StreamSession:
    """The state of one open stream."""

    def __init__(
        self,
        app: Flask,
        hub: Hub,
        principal: Principal,
        secret_prefix: str,
        filters: Filters,
        heartbeat: float,
    ) -> None:
        self.app = app
        self.hub = hub
        self.principal = principal
        self.secret_prefix = secret_prefix
        self.filters = filters
        self.heartbeat = heartbeat
        self.epoch = hub.epoch
        self.valid_until = _valid_until(principal.key, secret_prefix)

    def visible(self, entry: StreamEntry) -> bool:
        return (
            entry.tenant_id == self.principal.tenant_id
            and self.principal.has(entry.scope)
            and self.filters.admit(entry)
        )

    def run(
        self, subscriber: Subscriber, start_after: str, last_event_id: str | None
    ) -> Iterator[str]:
        """The SSE text of the whole stream; ends when the client goes or must be dropped."""
        reason = "client"
        try:
            yield f"retry: {RECONNECT_MS}\n: connected\n\n"
            sent = start_after
            if last_event_id is not None:
                sent = last_event_id
                yield from self._catch_up(last_event_id, start_after)
                if entry_id_key(start_after) > entry_id_key(sent):
                    sent = start_after
            while True:
                entries = subscriber.take(self.heartbeat)
                if subscriber.dropped:
                    reason = "slow"
                    yield _control("stream.gap", {"last_event_id": sent, "reason": "slow_client"})
                    return
                closed = self._still_allowed()  # before anything more is sent, busy or idle
                if closed is not None:
                    reason = "revoked"
                    yield closed
                    return
                if not entries:
                    yield ": heartbeat\n\n"
                    continue
                floor = entry_id_key(sent)
                for entry in entries:  # the hub passed only what this client may see
                    if entry_id_key(entry.id) <= floor:
                        continue  # already sent during the catch-up
                    sent = entry.id
                    yield message(entry)
        finally:
            self.hub.unsubscribe(subscriber)
            metrics.stream_connection("closed", reason)

    def _catch_up(self, last_event_id: str, until: str) -> Iterator[str]:
        client = connect(self.app)
        gap = _gap(client, last_event_id)
        if gap:
            yield _control("stream.gap", {"last_event_id": last_event_id, **gap})
        cursor = last_event_id
        while entry_id_key(cursor) < entry_id_key(until):
            page = client.xrange(STREAM_KEY, min=f"({cursor}", max=until, count=CATCH_UP_PAGE)
            if not page:
                return
            for entry_id, fields in page:
                entry = parse_entry(entry_id, fields)
                cursor = entry.id
                if self.visible(entry):
                    yield message(entry)

    def _still_allowed(self) -> str | None:
        """None while the key and the secret the stream was opened with are valid; else the
        ``stream.closed`` message to end with.

        The key is loaded again when the auth epoch moved (a key was revoked, rotated or
        changed anywhere) or when the key's expiry or the secret's grace period has passed.
        """
        due = self.valid_until is not None and self.valid_until <= utcnow()
        if not due and self.hub.epoch == self.epoch:
            return None
        self.epoch = self.hub.epoch
        key = self.principal.key
        try:
            with self.app.app_context(), database.connection_context():
                self.principal = principal_for_key(
                    key.id, self.principal.tenant_id, self.secret_prefix
                )
        except Problem as exc:
            return _control("stream.closed", {"reason": exc.description})
        self.valid_until = _valid_until(self.principal.key, self.secret_prefix)
        return None


def _valid_until(key: ApiKey, secret_prefix: str) -> datetime | None:
    """When the key expires or the (valid) secret's grace period ends, whichever is first."""
    ends = (key.expires_at, secret_valid_until(key, secret_prefix))
    known = [end for end in ends if end is not None]
    return min(known) if known else None
