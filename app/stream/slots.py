"""Stream slots: how many streams one key, and one user, may hold open at once.

Every open stream holds a slot in Redis under its key and under its key's owner (keys without
an owner count under the key alone), so the caps hold across every stream process. A slot is a
member of a sorted set scored by its lease's end: the hub renews the leases of its streams every
:data:`RENEW_EVERY` seconds and a closing stream gives its slot back, so a process that dies
without closing its streams frees their slots within :data:`LEASE_SECONDS`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from app.web.problems import Problem

LEASE_SECONDS = 30
RENEW_EVERY = 10.0
_SLOTS_KEY = "sb:stream:slots:"

# KEYS: the slot sets to claim in; ARGV[1] the slot, ARGV[2] lease ms, ARGV[3..] each set's cap.
# Returns 0 when claimed everywhere, else the (1-based) index of the set that is full.
_CLAIM_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i, key in ipairs(KEYS) do
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    if redis.call('ZCARD', key) >= tonumber(ARGV[2 + i]) then
        return i
    end
end
for _, key in ipairs(KEYS) do
    redis.call('ZADD', key, now + tonumber(ARGV[2]), ARGV[1])
    redis.call('PEXPIRE', key, tonumber(ARGV[2]))
end
return 0
"""

# KEYS: slot sets; ARGV[1] lease ms, ARGV[2..] a slot per set (same order). Extends live leases.
_RENEW_LUA = """
local t = redis.call('TIME')
local ends = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
    redis.call('ZADD', key, 'XX', ends, ARGV[1 + i])
    redis.call('PEXPIRE', key, tonumber(ARGV[1]))
end
return 0
"""


@dataclass(frozen=True)
class Slot:
    """One stream's claim: its id and the sets it counts in."""

    id: str
    sets: tuple[str, ...]


def claim(
    client: redis.Redis, key_id: str, user_id: str | None, per_key: int, per_user: int
) -> Slot:
    """A slot for a new stream of ``key_id`` (owned by ``user_id``); 429 when either is full."""
    caps = [(_SLOTS_KEY + "key:" + key_id, per_key, "key")]
    if user_id is not None:
        caps.append((_SLOTS_KEY + "user:" + user_id, per_user, "user"))
    slot = Slot(secrets.token_hex(8), tuple(name for name, _, _ in caps))
    try:
        script = client.register_script(_CLAIM_LUA)
        args: list[str | int] = [slot.id, LEASE_SECONDS * 1000, *(cap for _, cap, _ in caps)]
        full = int(script(keys=slot.sets, args=args))
    except redis.RedisError as exc:
        raise Problem(503, "Streams are unavailable (Redis); retry shortly.") from exc
    if full:
        _, cap, holder = caps[full - 1]
        raise Problem(
            429,
            f"This {holder} already holds its maximum of {cap} open streams: close one first.",
            headers={"Retry-After": "5"},
            type_slug="too-many-streams",
            title="Too many streams",
        )
    return slot


def renew(client: redis.Redis, slots: Iterable[Slot]) -> None:
    """Extend the leases of ``slots`` (open streams of this process), in one round trip."""
    script = client.register_script(_RENEW_LUA)
    pipe = client.pipeline(transaction=False)
    for slot in slots:
        args: list[str | int] = [LEASE_SECONDS * 1000, *([slot.id] * len(slot.sets))]
        script(keys=slot.sets, args=args, client=pipe)
    pipe.execute()


def release(client: redis.Redis, slot: Slot) -> None:
    """Give ``slot`` back (its stream closed); a failure leaves it to expire with its lease."""
    try:
        pipe = client.pipeline(transaction=False)
        for name in slot.sets:
            pipe.zrem(name, slot.id)
        pipe.execute()
    except redis.RedisError:
        pass
