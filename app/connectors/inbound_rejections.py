"""Rejected inbound requests: counted, logged once per interval, throttled per sender.

``POST /inbound/{integration_id}`` takes no API key, so anyone can post to it. A rejected request
(bad signature, sender not allowed, inactive integration, replay, a payload the connector cannot
read) therefore costs one Redis round trip, not a log row and a stream entry each:

- it is counted in ``switchboard_inbound_rejections_total{reason}``;
- it is counted per integration and ``SWITCHBOARD_INBOUND_REJECTION_LOG_INTERVAL``; the first
  rejection of an interval schedules a job for the interval's end that writes one
  ``inbound.rejected`` log row with the count (by reason, with the last error and address);
- it is counted per integration, sender address and minute: past
  ``SWITCHBOARD_INBOUND_REJECTIONS_PER_MINUTE``, the sender's further rejected requests are
  answered ``429`` with ``Retry-After``. Every request is still verified first, so a valid
  delivery is never refused because of anyone's rejections.
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from flask import current_app

from app.metrics import instruments as metrics
from app.store.db import database
from app.store.models import IntegrationLog
from app.store.queues import get_queue
from app.store.redis import get_redis
from app.stream import kinds
from app.web.problems import Problem

log = logging.getLogger(__name__)

THROTTLE_WINDOW = 60  # seconds
_THROTTLE_KEY = "sb:inbound:rejected:"
_SUMMARY_KEY = "sb:inbound:rejections:"
_TOTAL = "_total"
_LAST_ERROR = "_last_error"
_LAST_ADDRESS = "_last_address"


def rejected(
    integration_id: str, tenant_id: str, address: str, reason: str, status: int, detail: str
) -> Problem:
    """Count a rejected request and return the problem to answer it with: ``status`` and
    ``detail``, or 429 once ``address`` was rejected too often for this integration."""
    metrics.inbound_rejection(reason)
    now = time.time()
    interval = current_app.config["INBOUND_REJECTION_LOG_INTERVAL"]
    start = int(now // interval) * interval
    summary = f"{_SUMMARY_KEY}{integration_id}:{start}"
    sender = hashlib.sha256(address.encode()).hexdigest()[:32]
    throttle = f"{_THROTTLE_KEY}{integration_id}:{sender}:{int(now // THROTTLE_WINDOW)}"
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.incr(throttle)
        pipe.expire(throttle, THROTTLE_WINDOW * 2)
        pipe.hincrby(summary, _TOTAL, 1)
        pipe.hincrby(summary, reason, 1)
        pipe.hset(summary, mapping={_LAST_ERROR: detail[:500], _LAST_ADDRESS: address[:100]})
        pipe.expire(summary, interval * 2 + 3600)
        sent, _, total, *_ = pipe.execute()
        if int(total) == 1:
            get_queue("default").enqueue_at(
                datetime.fromtimestamp(start + interval + 1, UTC),
                write_rejection_summary,
                integration_id,
                tenant_id,
                start,
                interval,
                description=f"write_rejection_summary({integration_id!r})",
                job_timeout=60,
                result_ttl=60,
                failure_ttl=86400,
            )
    except redis.RedisError as exc:
        log.warning("rejected inbound request to %s not counted: %s", integration_id, exc)
        return Problem(status, detail)
    limit = current_app.config["INBOUND_REJECTIONS_PER_MINUTE"]
    if int(sent) > limit:
        wait = THROTTLE_WINDOW - int(now % THROTTLE_WINDOW)
        return Problem(
            429,
            f"{detail} Too many rejected requests from your address for this integration "
            f"(more than {limit} a minute): retry in {wait} s.",
            headers={"Retry-After": str(wait)},
        )
    return Problem(status, detail)


def write_rejection_summary(integration_id: str, tenant_id: str, start: int, interval: int) -> None:
    """RQ job at an interval's end: one ``inbound.rejected`` log row with its rejections."""
    summary = f"{_SUMMARY_KEY}{integration_id}:{start}"
    pipe = get_redis().pipeline(transaction=True)
    pipe.hgetall(summary)
    pipe.delete(summary)
    fields: dict[Any, Any] = pipe.execute()[0]
    counts = {_text(k): _text(v) for k, v in fields.items()}
    total = int(counts.pop(_TOTAL, "0"))
    if total == 0:
        return
    last_error, last_address = counts.pop(_LAST_ERROR, ""), counts.pop(_LAST_ADDRESS, "")
    began = datetime.fromtimestamp(start, UTC).replace(tzinfo=None)
    data = {
        "count": total,
        "reasons": {reason: int(n) for reason, n in sorted(counts.items())},
        "from": began.isoformat() + "Z",
        "until": (began + timedelta(seconds=interval)).isoformat() + "Z",
        "last_address": last_address,
    }
    with database.connection_context():
        row = IntegrationLog.create(
            tenant_id=tenant_id,
            integration_id=integration_id,
            event_type="inbound.rejected",
            event_data=data,
            status="error",
            error_message=f"{total} inbound request(s) rejected; last: {last_error}",
            response_time_ms=0,
        )
    kinds.log_created(row.to_dict())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
