"""Per-API-key rate limiting: "N requests per rolling window", never more, across processes.

Algorithm: a bucketed sliding window. The window is cut into ``BUCKETS`` equal slices; each key
owns one small Redis hash mapping a slice number to the requests admitted in it. One Lua script,
run with EVALSHA in a single round trip, drops slices that lie wholly before the window, sums the
rest (the oldest slice, which straddles the window's start, counts in full) and admits the
request only if the sum is below the limit. Because the script runs atomically on the Redis
server and reads the server's own clock (``TIME``), the limit holds no matter how many web
processes share it or how far their clocks drift. Denied requests write nothing, so they never
consume quota or push the window forward.

Bound: the straddling slice counts in full, so the limiter can only err on the safe side: in
any rolling window at most ``limit`` requests are admitted, and an admitted request frees its
quota at most one slice (``window / BUCKETS``, one minute for an hour) later than an exact
sliding log would.

Cost: at most ``BUCKETS + 1`` hash fields per key whatever the request rate (a few hundred
bytes, where a sliding log stored one sorted-set member per admitted request: ~60 MB for a key
at 1,000,000 requests per hour); the hash carries a PEXPIRE of one window plus a slice, so idle
keys disappear.

Redis failures surface as ``redis.exceptions.RedisError``; the caller decides whether to fail
open or closed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from redis import Redis

__all__ = ["BUCKETS", "RateLimitDecision", "RateLimiter", "SharedLimit"]

_MICROS = 1_000_000

#: Slices per window: quota frees at most ``window / BUCKETS`` late; state is bounded by it.
BUCKETS = 60
#: A lease takes at most this fraction (1/LEASE_SHARE) of the quota still free, so near the
#: limit every request goes to Redis and the count stays exact.
LEASE_SHARE = 64
#: The most requests one lease covers.
MAX_LEASE = 64
#: With leases, a request whose key's lease is being renewed by another request of this process
#: waits for that round trip (at most this long) rather than making its own: a burst of
#: concurrent requests costs one round trip, not one each.
FLIGHT_WAIT_SECONDS = 1.0

# KEYS[1]  hash: slice number -> requests admitted in that slice
# KEYS[2]  a key read along (the caller's cache epoch, see ``hit(watch=…)``); may not exist
# KEYS[3]  the same kind of hash for a limit shared with other keys (a tenant's quota)
# ARGV[1]  limit (>= 1)
# ARGV[2]  window in microseconds
# ARGV[3]  slice length in microseconds (window / BUCKETS, rounded up)
# ARGV[4]  the value KEYS[2] must hold for the request to be counted ('' = count regardless)
# ARGV[5]  requests wanted (>= 1): this one plus a lease for later ones; fewer are granted when
#          little quota is left (at most 1/LEASE_SHARE of it, and always at least this request)
# ARGV[6]  requests of an earlier lease that were never admitted, given back ...
# ARGV[7]  ... to the slice they were counted in
# ARGV[8]  the shared limit of KEYS[3] (0: none); a request is admitted only under both, and
#          counted in both
# Returns {allowed (0|1; -1 = not counted: KEYS[2] differs from ARGV[4]), count in window after
#          this call, microseconds until more quota frees, value of KEYS[2] or false, granted,
#          the current slice's number, microseconds until it ends, 1 if the shared limit (not
#          the key's own) refused it, the shared count}
_SLIDING_WINDOW_LUA = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local slice = tonumber(ARGV[3])
local back = tonumber(ARGV[6])
local shared_limit = tonumber(ARGV[8])

local function give_back(key)
    local n = tonumber(redis.call('HGET', key, ARGV[7]))
    if n and n > back then
        redis.call('HINCRBY', key, ARGV[7], -back)
    elseif n then
        redis.call('HDEL', key, ARGV[7])
    end
end
if back > 0 then
    give_back(KEYS[1])
    if shared_limit > 0 then give_back(KEYS[3]) end
end
local watched = redis.call('GET', KEYS[2])
if ARGV[4] ~= '' and watched ~= ARGV[4] then
    return {-1, 0, 0, watched, 0, 0, 0, 0, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local current = math.floor(now / slice)
-- Slices numbered below `first` end at or before now - window: nothing in them still counts.
local first = math.floor((now - window) / slice)

local function load(key)
    local fields = redis.call('HGETALL', key)
    local slices, count = {}, 0
    for i = 1, #fields, 2 do
        local number = tonumber(fields[i])
        if number < first then
            redis.call('HDEL', key, fields[i])
        else
            local n = tonumber(fields[i + 1])
            slices[#slices + 1] = {number, n}
            count = count + n
        end
    end
    return slices, count
end
local slices, count = load(KEYS[1])
local shared_slices, shared_count = {}, 0
if shared_limit > 0 then
    shared_slices, shared_count = load(KEYS[3])
end

local allowed, granted, by_shared = 0, 0, 0
if count < limit and (shared_limit == 0 or shared_count < shared_limit) then
    granted = math.max(1, math.min(tonumber(ARGV[5]), math.floor((limit - count) / LEASE_SHARE)))
    if shared_limit > 0 then
        local room = math.floor((shared_limit - shared_count) / LEASE_SHARE)
        granted = math.max(1, math.min(granted, room))
        redis.call('HINCRBY', KEYS[3], current, granted)
        redis.call('PEXPIRE', KEYS[3], math.ceil((window + slice) / 1000))
        shared_slices[#shared_slices + 1] = {current, granted}
        shared_count = shared_count + granted
    end
    redis.call('HINCRBY', KEYS[1], current, granted)
    redis.call('PEXPIRE', KEYS[1], math.ceil((window + slice) / 1000))
    slices[#slices + 1] = {current, granted}
    count = count + granted
    allowed = 1
elseif count < limit then
    by_shared = 1
end

-- When more quota frees: slice s stops counting at (s + 1) * slice + window. If denied, a
-- request is admitted once (count - limit + 1) requests have left (more than one if the limit
-- was lowered); otherwise when the oldest slice leaves.
local function wait_for(list, total, cap)
    if total == 0 then return 0 end
    table.sort(list, function(a, b) return a[1] < b[1] end)
    local need = 1
    if allowed == 0 then
        need = total - cap + 1
    end
    local freed = 0
    for _, entry in ipairs(list) do
        freed = freed + entry[2]
        if freed >= need then
            return (entry[1] + 1) * slice + window - now
        end
    end
    return 0
end
local wait
if by_shared == 1 then
    wait = wait_for(shared_slices, shared_count, shared_limit)
else
    wait = wait_for(slices, count, limit)
end
return {allowed, count, wait, watched, granted, current, (current + 1) * slice - now,
        by_shared, shared_count}
""".replace("LEASE_SHARE", str(LEASE_SHARE))


@dataclass(frozen=True)
class SharedLimit:
    """A limit several keys count against together (a tenant's requests per window)."""

    id: str
    limit: int


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
    by_shared: bool = False  # refused by the shared limit, not by the key's own

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


@dataclass
class _Lease:
    """Requests of one key already counted in Redis, admitted here without asking again."""

    limit: int
    shared: SharedLimit | None  # the shared limit it was also counted against
    epoch: str | None  # the watched value when it was granted
    granted: int  # requests the grant covered, the one that asked included
    left: int  # still to admit
    slice: int  # the slice they are counted in
    expires: float  # time.monotonic(); never after that slice ends
    decision: RateLimitDecision  # what the requests it admits answer (headers as of the grant)


class RateLimiter:
    """Bucketed sliding-window limiter over Redis; safe to share between threads and processes.

    ``limit`` must be >= 1: API keys always carry a positive ``rate_limit``, and "unlimited"
    is expressed by not calling the limiter, so a non-positive limit is a programming error
    and raises ``ValueError`` rather than silently allowing or denying everything.

    With ``lease_seconds`` > 0 a busy key's requests mostly skip Redis: the script admits the
    request that asks and counts up to ``MAX_LEASE - 1`` more at once, which this process
    then admits locally for ``lease_seconds``. The size follows the key's traffic here (double
    after a lease used up early, else what the last one used), and a lease never takes more
    than ``1/LEASE_SHARE`` of the quota still free. So the limit still holds across processes
    (a leased request is counted before it is admitted); near the limit every request asks
    Redis, exactly as without leases; a key that goes quiet wastes at most what its last lease
    had left; and what a lease admits carries the headers and the ``watch`` value of its
    grant, at most ``lease_seconds`` old.

    A lease also ends with the slice its requests were counted in: a request admitted later
    would leave the window earlier than one window after its admission. What a lease did not
    admit is given back to that slice by the key's next round trip.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        window_seconds: int = 3600,
        prefix: str = "sb:rl:",
        policy: str = "hour",
        lease_seconds: float = 0,
    ) -> None:
        if window_seconds < 1:
            raise ValueError("window_seconds must be >= 1")
        if lease_seconds < 0:
            raise ValueError("lease_seconds must be >= 0")
        _sf_string(policy)  # fail at construction, not on the first request
        self.redis = redis
        self.window_seconds = window_seconds
        self.prefix = prefix
        self.policy = policy
        self.lease_seconds = lease_seconds
        self._slice_us = -(-window_seconds * _MICROS // BUCKETS)
        self._script = redis.register_script(_SLIDING_WINDOW_LUA)
        self._leases: dict[str, _Lease] = {}
        # key id -> set once the round trip under way for it (renewing its lease) is back
        self._flights: dict[str, threading.Event] = {}
        self._owed: dict[str, tuple[int, int]] = {}  # key id -> (unused, slice) to give back
        self._lock = threading.Lock()
        self._generation = 0  # moved by forget_leases: a grant from before it is not kept

    def key(self, key_id: str) -> str:
        """Redis key holding the per-slice counts of ``key_id``."""
        return f"{self.prefix}{key_id}"

    def shared_key(self, shared_id: str) -> str:
        """Redis key holding the per-slice counts of a shared limit."""
        return f"{self.prefix}shared:{shared_id}"

    def forget_leases(self) -> None:
        """Drop every lease: the next request of each key asks Redis (and reads ``watch``)."""
        with self._lock:
            self._leases.clear()
            self._generation += 1

    def hit(
        self,
        key_id: str,
        limit: int,
        *,
        shared: SharedLimit | None = None,
        watch: str | None = None,
        expect: str | None = None,
    ) -> RateLimitDecision:
        """Count one request for ``key_id`` against ``limit`` per window (and against the
        ``shared`` limit, in the same round trip); admit it if it fits both.

        ``watch`` names a Redis key whose value is returned in ``decision.watched`` by the same
        round trip (the auth layer reads its cache epoch this way). With ``expect``, nothing is
        counted unless ``watch`` holds that value (``decision.counted`` is then False).

        Raises:
            ValueError: ``limit`` < 1 (or the shared one).
            redis.exceptions.RedisError: Redis is unreachable or the script failed.
        """
        if limit < 1 or (shared is not None and shared.limit < 1):
            raise ValueError("limit must be >= 1")
        wanted, back, back_slice, generation = 1, 0, 0, 0
        flight: threading.Event | None = None
        if self.lease_seconds:
            deadline = time.monotonic() + FLIGHT_WAIT_SECONDS
            while True:
                leased, wanted, back, back_slice, generation = self._from_lease(
                    key_id, limit, shared, expect
                )
                if leased is not None:
                    return leased
                with self._lock:
                    if back:  # only this caller may give these back: the next round trip will
                        owed = self._owed.get(key_id, (0, back_slice))
                        self._owed[key_id] = (owed[0] + back, back_slice)
                    other = self._flights.get(key_id)
                    if other is None or time.monotonic() > deadline:
                        flight = self._flights[key_id] = threading.Event()
                        back, back_slice = self._owed.pop(key_id, (0, 0))
                        break
                other.wait(max(0.0, deadline - time.monotonic()))
        try:
            return self._ask_redis(
                key_id, limit, shared, watch, expect, wanted, back, back_slice, generation
            )
        finally:
            if flight is not None:
                with self._lock:
                    if self._flights.get(key_id) is flight:
                        del self._flights[key_id]
                flight.set()

    def _ask_redis(
        self,
        key_id: str,
        limit: int,
        shared: SharedLimit | None,
        watch: str | None,
        expect: str | None,
        wanted: int,
        back: int,
        back_slice: int,
        generation: int,
    ) -> RateLimitDecision:
        """One round trip: count this request (and ``wanted - 1`` ahead, kept as a lease)."""
        asked = time.monotonic()
        reply = self._script(
            keys=[
                self.key(key_id),
                watch or f"{self.prefix}-unwatched",
                self.shared_key(shared.id) if shared else f"{self.prefix}-unshared",
            ],
            args=[
                limit,
                self.window_seconds * _MICROS,
                self._slice_us,
                expect or "",
                wanted,
                back,
                back_slice,
                shared.limit if shared else 0,
            ],
        )
        allowed, count, wait_us, watched, granted, current, slice_left_us, by_shared, _ = reply
        wait_seconds = -(-int(wait_us) // _MICROS)  # round up: never promise too early
        decision = RateLimitDecision(
            allowed=bool(allowed),
            limit=limit,
            remaining=max(0, limit - int(count)),
            reset_after=wait_seconds,
            retry_after=0 if allowed else max(1, wait_seconds),
            window_seconds=self.window_seconds,
            policy=self.policy,
            watched=watched.decode() if isinstance(watched, bytes) else (watched or None),
            counted=int(allowed) >= 0,
            by_shared=bool(int(by_shared)),
        )
        if self.lease_seconds and int(allowed) == 1:
            lease = _Lease(
                limit=limit,
                shared=shared,
                epoch=decision.watched,
                granted=int(granted),
                left=int(granted) - 1,
                slice=int(current),
                expires=asked + min(self.lease_seconds, int(slice_left_us) / _MICROS),
                decision=decision,
            )
            with self._lock:
                if self._generation == generation:  # no forget_leases() since we asked
                    self._keep(key_id, lease)
        return decision

    def _keep(self, key_id: str, lease: _Lease) -> None:
        """Store ``lease`` (lock held), adding what a concurrent grant of the same slice had
        left: those requests are counted too and would otherwise go unused."""
        other = self._leases.get(key_id)
        if (
            other is not None
            and other.left > 0
            and (other.slice, other.limit, other.shared, other.epoch)
            == (lease.slice, lease.limit, lease.shared, lease.epoch)
        ):
            lease.left += other.left
            lease.expires = min(lease.expires, other.expires)
        self._leases[key_id] = lease

    def _from_lease(
        self, key_id: str, limit: int, shared: SharedLimit | None, expect: str | None
    ) -> tuple[RateLimitDecision | None, int, int, int, int]:
        """A decision from this key's lease; or None, how many requests to ask Redis for, the
        unused requests of the old lease to give back and their slice, and the generation."""
        now = time.monotonic()
        with self._lock:
            generation = self._generation
            lease = self._leases.get(key_id)
            if lease is None:
                return None, 1, 0, 0, generation
            fresh = now < lease.expires
            if (
                fresh
                and lease.left > 0
                and lease.limit == limit
                and lease.shared == shared
                and (expect is None or expect == lease.epoch)
            ):
                lease.left -= 1
                return lease.decision, 0, 0, 0, generation
            if fresh and lease.left == 0:  # used up early: the key is busier than its lease
                return None, min(MAX_LEASE, 2 * lease.granted), 0, 0, generation
            back, lease.left = lease.left, 0  # given back by this caller alone
            return None, max(1, lease.granted - back), back, lease.slice, generation
