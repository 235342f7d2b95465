"""Per-API-key rate limiting: "N requests per rolling window", exact across processes.

Algorithm: a sliding-window log. Each key owns one Redis sorted set whose members are the
requests admitted in the last ``window_seconds`` (score = Redis server time in microseconds,
member unique per request). One Lua script, run with EVALSHA in a single round trip, drops
entries that left the window, counts what is left and admits the request only if the count is
below the limit. Because the script runs atomically on the Redis server and reads the server's
own clock (``TIME``), the answer is exact no matter how many web processes share the limit or
how far their clocks drift. Denied requests write nothing, so they never consume quota or push
the window forward.

Cost: one sorted-set entry per admitted request still inside the window, i.e. at most ``limit``
entries per key; the key carries a PEXPIRE of one window so idle keys disappear.

Redis failures surface as ``redis.exceptions.RedisError``; the caller decides whether to fail
open or closed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from redis import Redis

__all__ = ["RateLimitDecision", "RateLimiter"]

_MICROS = 1_000_000

# KEYS[1]  sorted set of admitted requests (score: server time in microseconds)
# KEYS[2]  a key read along (the caller's cache epoch, see ``hit(watch=…)``); may not exist
# ARGV[1]  limit (>= 1)
# ARGV[2]  window in microseconds
# ARGV[3]  member, unique for this request
# ARGV[4]  the value KEYS[2] must hold for the request to be counted ('' = count regardless)
# Returns {allowed (0|1; -1 = not counted: KEYS[2] differs from ARGV[4]), count in window after
#          this call, microseconds until more quota frees, value of KEYS[2] or false}
_SLIDING_LOG_LUA = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local watched = redis.call('GET', KEYS[2])
if ARGV[4] ~= '' and watched ~= ARGV[4] then
    return {-1, 0, 0, watched}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- An entry admitted at s counts while now - s < window.
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)

local allowed = 0
if count < limit then
    redis.call('ZADD', key, now, ARGV[3])
    redis.call('PEXPIRE', key, math.ceil(window / 1000))
    count = count + 1
    allowed = 1
end

-- When more quota frees: if denied, a request is admitted once (count - limit + 1) entries
-- have left (more than one if the limit was lowered); otherwise when the oldest leaves.
local wait = 0
if count > 0 then
    local index = 0
    if allowed == 0 then
        index = count - limit
    end
    local entry = redis.call('ZRANGE', key, index, index, 'WITHSCORES')
    wait = tonumber(entry[2]) + window - now
end
return {allowed, count, wait, watched}
"""


def _sf_string(value: str) -> str:
    """Serialise ``value`` as an RFC 9651 structured-field String."""
    if not value.isascii() or not value.isprintable():
        raise ValueError("policy name must be printable ASCII")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class RateLimitDecision:
    """The outcome of one rate-limit check, with everything the HTTP headers need.

    ``reset_after`` is the whole seconds (rounded up) until more quota becomes available, i.e.
    until the oldest counted request leaves the window; 0 when nothing is counted. This is the
    ``t`` parameter of the ``RateLimit`` header (draft-ietf-httpapi-ratelimit-headers-10:
    "seconds until additional quota is made available"). ``retry_after`` is the honest wait
    before a retry can be admitted: >= 1 when denied, 0 when allowed.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: int
    retry_after: int
    window_seconds: int = 3600
    policy: str = "hour"
    watched: str | None = None  # value of the ``watch`` key read in the same round trip
    counted: bool = True  # False: the ``watch`` key did not hold the expected value

    def policy_header(self) -> str:
        """Value of the ``RateLimit-Policy`` header, e.g. ``"hour";q=1000;w=3600``."""
        return f"{_sf_string(self.policy)};q={self.limit};w={self.window_seconds}"

    def limit_header(self) -> str:
        """Value of the ``RateLimit`` header, e.g. ``"hour";r=999;t=3600``."""
        return f"{_sf_string(self.policy)};r={self.remaining};t={self.reset_after}"

    def headers(self) -> dict[str, str]:
        """All rate-limit response headers, including ``Retry-After`` when denied."""
        headers = {"RateLimit-Policy": self.policy_header(), "RateLimit": self.limit_header()}
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


class RateLimiter:
    """Sliding-window-log limiter over Redis; safe to share between threads and processes.

    ``limit`` must be >= 1: API keys always carry a positive ``rate_limit``, and "unlimited"
    is expressed by not calling the limiter, so a non-positive limit is a programming error
    and raises ``ValueError`` rather than silently allowing or denying everything.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        window_seconds: int = 3600,
        prefix: str = "sb:rl:",
        policy: str = "hour",
    ) -> None:
        if window_seconds < 1:
            raise ValueError("window_seconds must be >= 1")
        _sf_string(policy)  # fail at construction, not on the first request
        self.redis = redis
        self.window_seconds = window_seconds
        self.prefix = prefix
        self.policy = policy
        self._script = redis.register_script(_SLIDING_LOG_LUA)

    def key(self, key_id: str) -> str:
        """Redis key holding the request log of ``key_id``."""
        return f"{self.prefix}{key_id}"

    def hit(
        self, key_id: str, limit: int, *, watch: str | None = None, expect: str | None = None
    ) -> RateLimitDecision:
        """Count one request for ``key_id`` against ``limit`` per window; admit it if it fits.

        ``watch`` names a Redis key whose value is returned in ``decision.watched`` by the same
        round trip (the auth layer reads its cache epoch this way). With ``expect``, nothing is
        counted unless ``watch`` holds that value (``decision.counted`` is then False).

        Raises:
            ValueError: ``limit`` < 1.
            redis.exceptions.RedisError: Redis is unreachable or the script failed.
        """
        if limit < 1:
            raise ValueError("limit must be >= 1")
        member = os.urandom(12).hex()
        allowed, count, wait_us, watched = self._script(
            keys=[self.key(key_id), watch or f"{self.prefix}-unwatched"],
            args=[limit, self.window_seconds * _MICROS, member, expect or ""],
        )
        wait_seconds = -(-int(wait_us) // _MICROS)  # round up: never promise too early
        return RateLimitDecision(
            allowed=bool(allowed),
            limit=limit,
            remaining=max(0, limit - int(count)),
            reset_after=wait_seconds,
            retry_after=0 if allowed else max(1, wait_seconds),
            window_seconds=self.window_seconds,
            policy=self.policy,
            watched=watched.decode() if isinstance(watched, bytes) else (watched or None),
            counted=int(allowed) >= 0,
        )
