"""Throttling of failed credentials: slows password guessing and bcrypt exhaustion.

Attempts are counted in Redis per identity (an email, a client address, a key prefix) in a fixed
window. A caller takes a slot (one atomic increment per identity) *before* any bcrypt work: past
the limit it gets 429 and no bcrypt runs, however many requests arrive at once. A correct
credential gives its slot back, so only failures use up the window. When Redis is unavailable
the throttle steps aside (the rate limiter reports Redis outages on its own).
"""

from __future__ import annotations

import hashlib
import logging

import redis

from app.store.redis import get_redis
from app.web.problems import Problem

log = logging.getLogger(__name__)

WINDOW_SECONDS = 15 * 60
MAX_FAILURES = 10

# Take a slot of every identity (a new window opens with the first); when any is over the
# limit, give them all back (no attempt is made) and answer the longest wait, else 0.
_TAKE = """
local over = false
for _, key in ipairs(KEYS) do
    local count = redis.call('INCR', key)
    if count == 1 then redis.call('EXPIRE', key, ARGV[1]) end
    if count > tonumber(ARGV[2]) then over = true end
end
if not over then return 0 end
local wait = 1
for _, key in ipairs(KEYS) do
    if tonumber(redis.call('DECR', key)) >= tonumber(ARGV[2]) then
        wait = math.max(wait, redis.call('TTL', key))
    end
end
return wait
"""
# Give a slot back, never reviving a window that has ended meanwhile.
_GIVE_BACK = """
for _, key in ipairs(KEYS) do
    if redis.call('EXISTS', key) == 1 then redis.call('DECR', key) end
end
return 0
"""


def _key(kind: str, ident: str) -> str:
    return f"sb:authfail:{kind}:{hashlib.sha256(ident.encode()).hexdigest()[:32]}"


def _keys(idents: dict[str, str]) -> list[str]:
    return [_key(kind, ident) for kind, ident in idents.items()]


def take_slot(**idents: str) -> int | None:
    """Take one attempt of each ``kind=identity``; the seconds to wait when any is used up
    (then nothing is taken and no bcrypt may run), else None."""
    try:
        wait = get_redis().eval(_TAKE, len(idents), *_keys(idents), WINDOW_SECONDS, MAX_FAILURES)
    except redis.RedisError as exc:
        log.warning("credential throttle unavailable: %s", exc)
        return None
    return int(wait) or None


def give_back(**idents: str) -> None:
    """Return the slots of an attempt whose credential was correct."""
    try:
        get_redis().eval(_GIVE_BACK, len(idents), *_keys(idents))
    except redis.RedisError as exc:
        log.warning("credential throttle unavailable: %s", exc)


def too_many(wait: int) -> Problem:
    """The 429 answer for a throttled identity."""
    return Problem(
        429,
        f"Too many failed attempts; retry in {wait} seconds.",
        headers={"Retry-After": str(wait)},
    )


def refuse_or_take_slot(**idents: str) -> None:
    """Take a slot of each ``kind=identity``, or raise 429 when any is used up."""
    wait = take_slot(**idents)
    if wait is not None:
        raise too_many(wait)
