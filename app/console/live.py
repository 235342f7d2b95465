"""The portal's Live page reads the live stream (the Redis Stream that ``/api/v1/stream``
serves) for its tenant's delivery attempts; htmx asks for what arrived every two seconds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis

from app.store import jsoncodec
from app.store.redis import get_redis
from app.stream.hub import entry_id_key, parse_entry
from app.stream.publish import STREAM_KEY

#: At most this many stream entries are read per poll (the page asks again at once if full).
READ_PAGE = 500


def latest_id() -> str:
    """The id of the newest stream entry ("0-0" for an empty stream): the page shows what
    arrives after it."""
    try:
        newest = get_redis().xrevrange(STREAM_KEY, count=1)
    except redis.RedisError:
        return "0-0"
    return parse_entry(*newest[0]).id if newest else "0-0"


def deliveries_after(tenant_id: str, after: str) -> tuple[list[dict[str, Any]], str]:
    """``tenant_id``'s delivery attempts in the stream after entry ``after``, oldest first,
    and the id to ask after next time."""
    try:
        entry_id_key(after)
    except ValueError:
        after = latest_id()
        return [], after
    try:
        page = get_redis().xrange(STREAM_KEY, min=f"({after}", max="+", count=READ_PAGE)
    except redis.RedisError:
        return [], after
    rows = []
    for raw_id, fields in page or ():
        entry = parse_entry(raw_id, fields)
        after = entry.id
        if entry.tenant_id == tenant_id and entry.kind == "delivery.attempted" and entry.webhook_id:
            at = datetime.fromtimestamp(entry_id_key(entry.id)[0] / 1000, UTC)
            rows.append({**jsoncodec.loads(entry.data), "at": at.strftime("%H:%M:%S")})
    return rows, after
