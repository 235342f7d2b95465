"""Erasing events (GDPR): the payload goes, the record that something happened stays.

:func:`erase_events` empties each event's payload and marks it ``erased_at``; its deliveries
keep their ids, times, attempts and outcomes, but lose the receivers' stored answers
(``response_body``), and those not sent yet are ``discarded`` (a fifo queue's next one goes).
The event's entry in the live stream goes too. An erased event is never sent again: the
dispatcher fails an attempt of one for good.

:func:`erase_matching` is the job behind ``POST /erasure``: it walks a tenant's events (since
a time) in batches of ``SWITCHBOARD_RETENTION_BATCH_SIZE`` by keyset, each batch one short
transaction, and erases those whose body has every ``match`` path equal to its value (the
paths of filters and ordering keys: ``data.customer.email``; an array holding the value
matches, as in filters). A string value is first looked
for in the stored JSON by the database (a plain substring test), so only candidate payloads
are read. The job is idempotent: run again, it finds nothing left to erase.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import peewee
from flask import current_app
from rq import Retry

from app.events import fifo
from app.events.filters import parse_path, resolve, value_key, value_keys
from app.logs.structured import job_meta
from app.store.db import database
from app.store.models import Delivery, DeliveryAttempt, Event, new_id, utcnow
from app.store.queues import get_queue
from app.store.redis import get_redis
from app.stream.publish import delete_entries

log = logging.getLogger(__name__)

#: A discarded delivery's error, and what the dispatcher answers for an erased event.
EVENT_ERASED = "the event was erased: nothing left to send"
UNSENT = ("pending", "held", "queued")
MAX_MATCH_FIELDS = 10
JOB_TIMEOUT = 3600


def erase_events(tenant_id: str, event_ids: list[str]) -> int:
    """Erase the tenant's events ``event_ids`` (see the module doc) in this transaction;
    return how many were not erased already. The stream entries go after commit."""
    if not event_ids:
        return 0
    now = utcnow()
    erased = int(
        Event.update_of(tenant_id, payload={}, erased_at=now)
        .where(Event.id.in_(event_ids) & Event.erased_at.is_null())
        .execute()
    )
    deliveries = list(
        Delivery.of(
            tenant_id, Delivery.id, Delivery.tenant_id, Delivery.webhook, Delivery.ordering_key
        ).where(Delivery.event.in_(event_ids))
    )
    for chunk in peewee.chunked([d.id for d in deliveries], 500):
        DeliveryAttempt.update_of(tenant_id, response_body=None).where(
            DeliveryAttempt.delivery.in_(chunk) & DeliveryAttempt.response_body.is_null(False)
        ).execute()
    unsent = list(
        Delivery.update_of(tenant_id, status="discarded", last_error=EVENT_ERASED, updated_at=now)
        .where(Delivery.event.in_(event_ids) & Delivery.status.in_(UNSENT))
        .returning(Delivery.id)
        .execute()
    )
    gone = {row.id for row in unsent}
    queues: dict[str, set[str]] = {}
    for webhook_id, key in fifo.queues_of(d for d in deliveries if d.id in gone):
        queues.setdefault(webhook_id, set()).add(key)
    for webhook_id, keys in queues.items():
        fifo.promote_after_commit(tenant_id, webhook_id, keys)
    erased_ids = set(event_ids)
    database.after_commit(lambda: _forget_stream_entries(tenant_id, erased_ids))
    return erased


def _forget_stream_entries(tenant_id: str, event_ids: set[str]) -> None:
    """Delete the events' ``event.published`` entries from the live stream (best effort: the
    stream forgets them within ``SWITCHBOARD_STREAM_RETENTION`` anyway)."""

    def wanted(fields: dict[str, str]) -> bool:
        if fields.get("t") != tenant_id or fields.get("k") != "event.published":
            return False
        return json.loads(fields.get("d") or "{}").get("id") in event_ids

    try:
        delete_entries(get_redis(), wanted)
    except Exception:  # noqa: BLE001 - the database erasure stands; log and go on
        log.warning("could not remove %d erased events from the live stream", len(event_ids))


def match_problems(match: Any) -> dict[str, list[str]]:
    """What is wrong with an erasure's ``match`` ({path: value}), by field; empty when fine."""
    if not isinstance(match, dict) or not match:
        return {"match": ["must be a non-empty object of path: value"]}
    if len(match) > MAX_MATCH_FIELDS:
        return {"match": [f"must hold at most {MAX_MATCH_FIELDS} paths"]}
    errors: dict[str, list[str]] = {}
    for path, value in match.items():
        try:
            parse_path(path)
        except ValueError as exc:
            errors[f"match.{path}"] = [str(exc)]
        if value_key(value) is None:
            errors[f"match.{path}"] = ["must be a string, number, boolean or null"]
    return errors


def start_matching_erasure(tenant_id: str, match: dict[str, Any], since: datetime | None) -> str:
    """Queue :func:`erase_matching` after this transaction commits; return its job id."""
    job_id = new_id("erase", 20)
    since_text = since.isoformat() if since is not None else None
    database.after_commit(
        lambda: get_queue("default").enqueue(
            erase_matching,
            tenant_id,
            match,
            since_text,
            job_id=job_id,
            job_timeout=JOB_TIMEOUT,
            retry=Retry(max=3, interval=[10, 60, 300]),
            result_ttl=7 * 86400,
            failure_ttl=7 * 86400,
            description="erase_matching()",  # the match is personal data: never in RQ's text
            meta=job_meta({"tenant_id": tenant_id, "action": "events.erase"}),
        )
    )
    return job_id


def erase_matching(tenant_id: str, match: dict[str, Any], since: str | None) -> dict[str, int]:
    """RQ job: erase the tenant's events since ``since`` whose body matches (module doc)."""
    paths = {parse_path(path): value_key(value) for path, value in match.items()}
    needles = [json.dumps(value) for value in match.values() if isinstance(value, str)]
    batch = int(current_app.config["RETENTION_BATCH_SIZE"])
    scanned = erased = 0
    after: tuple[datetime, str] | None = None
    with database.connection_context():
        while True:
            query = Event.of(tenant_id, Event.id, Event.type, Event.payload, Event.created_at)
            query = query.where(Event.erased_at.is_null())
            if since is not None:
                query = query.where(Event.created_at >= datetime.fromisoformat(since))
            for needle in needles:
                query = query.where(_contains(Event.payload, needle))
            if after is not None:
                query = query.where(
                    (Event.created_at > after[0])
                    | ((Event.created_at == after[0]) & (Event.id > after[1]))
                )
            rows = list(query.order_by(Event.created_at, Event.id).limit(batch))
            if not rows:
                break
            scanned += len(rows)
            after = (rows[-1].created_at, rows[-1].id)
            chosen = [row.id for row in rows if _matches(row, paths)]
            with database.atomic():
                erased += erase_events(tenant_id, chosen)
    log.info("erasure in %s: %d events erased of %d looked at", tenant_id, erased, scanned)
    return {"erased": erased, "scanned": scanned}


def _contains(column: Any, needle: str) -> Any:
    """``column`` holds ``needle`` as text (a substring test, no pattern characters)."""
    if isinstance(database.obj, peewee.PostgresqlDatabase):
        return peewee.fn.STRPOS(column, needle) > 0
    return peewee.fn.INSTR(column, needle) > 0


def _matches(row: Event, paths: dict[tuple[str, ...], Any]) -> bool:
    body = {"type": row.type, "data": row.payload}
    return all(wanted in value_keys(resolve(body, path)) for path, wanted in paths.items())
