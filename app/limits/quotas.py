"""Tenant quotas: what one tenant may use, beside each key's own rate limit.

A tenant's ``quotas`` (set by the operator; a missing or null one is unlimited):

- ``requests_per_hour`` — API requests of all the tenant's keys together, counted in the same
  Redis round trip as each key's own limit (:mod:`app.limits.limiter`'s shared limit);
- ``events_per_day`` — events published through ``POST /events`` per UTC day (events
  Switchboard emits itself never count against it), one atomic Redis counter per day;
- ``max_webhooks``, ``max_integrations``, ``max_keys`` (active keys) — how many may exist,
  counted in the creating transaction with the tenant's row locked, so concurrent creates
  cannot both take the last place.

Over a quota the answer is a 429 problem of type ``quota-exceeded`` naming it (``quota``), with
``Retry-After`` where it refills.
"""

from __future__ import annotations

import time
from typing import Any

import peewee

from app.limits.limiter import SharedLimit
from app.store.db import database
from app.store.models import Tenant
from app.store.redis import get_redis
from app.web.problems import Problem

DAY = 86400

QUOTAS: dict[str, str] = {
    "requests_per_hour": "API requests per hour, shared by all of the tenant's keys",
    "events_per_day": "events published through POST /events per UTC day",
    "max_webhooks": "webhook endpoints",
    "max_integrations": "integrations",
    "max_keys": "active (unrevoked) API keys",
}

# KEYS[1] the day's counter; ARGV[1] limit, ARGV[2] TTL (s). Returns the count, or -1 (full).
_COUNT_LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then
    redis.call('DECR', KEYS[1])
    return -1
end
return n
"""


def quota_exceeded(name: str, detail: str, retry_after: int | None = None) -> Problem:
    """The 429 problem of a quota (``type`` ``quota-exceeded``, ``quota`` naming it)."""
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return Problem(
        429, detail, type_slug="quota-exceeded", title="Quota exceeded", quota=name, headers=headers
    )


def quota(tenant: Tenant, name: str) -> int | None:
    """The tenant's ``name`` quota, or None when unlimited."""
    value = (tenant.quotas or {}).get(name)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def requests_limit(tenant: Tenant) -> SharedLimit | None:
    """The tenant's ``requests_per_hour`` as the limiter's shared limit, if it has one."""
    limit = quota(tenant, "requests_per_hour")
    return SharedLimit(tenant.id, limit) if limit else None


def count_event(tenant: Tenant) -> None:
    """Count one event published through the API against ``events_per_day``, or raise 429."""
    limit = quota(tenant, "events_per_day")
    if limit is None:
        return
    now = time.time()
    day = int(now // DAY)
    script = get_redis().register_script(_COUNT_LUA)
    if int(script(keys=[f"sb:quota:events:{tenant.id}:{day}"], args=[limit, 2 * DAY])) < 0:
        refills = max(1, int((day + 1) * DAY - now))
        raise quota_exceeded(
            "events_per_day",
            f"This tenant may publish {limit} events per day (quota `events_per_day`); the "
            f"count starts again at 00:00 UTC, in {refills} seconds.",
            retry_after=refills,
        )


def check_room(tenant_id: str, name: str, existing: peewee.ModelSelect) -> None:
    """Raise 429 when the tenant already has its ``name`` quota of ``existing`` rows.

    Call inside the creating transaction: on PostgreSQL the tenant's row is locked first, so
    concurrent creates in one tenant queue instead of both taking the last place (SQLite runs
    one write transaction at a time anyway).
    """
    query: Any = Tenant.select().where(Tenant.id == tenant_id)
    if isinstance(database.obj, peewee.PostgresqlDatabase):
        query = query.for_update()
    tenant = query.first()
    limit = quota(tenant, name) if tenant is not None else None
    if limit is not None and existing.count() >= limit:
        raise quota_exceeded(
            name,
            f"This tenant has its quota of {limit} {QUOTAS[name]} (quota `{name}`); delete one "
            "or ask the operator for more.",
        )
