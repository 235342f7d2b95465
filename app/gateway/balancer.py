"""Weighted round robin across a pool of upstreams, with passive health shared through Redis.

Picking: nginx's *smooth* weighted round robin, with its per-upstream "current weight" kept
in one Redis hash per pool and updated by a Lua script, so every web process takes part in
one schedule. Weights 3:1 give the interleaved sequence A A B A, i.e. exactly 225:75 over
300 picks however the picks are spread over processes. Upstreams that cannot take a request
(ejected, already tried by this request, weight 0) sit out of the step, so their share is
spread over the others in proportion to weight rather than dumped on a neighbour.

Passive health (per pool and upstream URL, one Redis hash each):

- ``report_failure`` counts consecutive failures; at ``failure_threshold`` the upstream is
  ejected for ``cooldown_seconds``.
- After the cooldown it is *half-open*: ``pick`` lets exactly one trial request through at a
  time (a trial lock with a TTL of ``trial_timeout_seconds``, so a lost trial cannot block
  the upstream forever). A success closes it (healthy again); a failure ejects it again at
  once for another cooldown.
- ``report_success`` resets the consecutive-failure count.
- Reports that arrive while an upstream is inside its cooldown are ignored: they come from
  requests sent before the ejection and must neither shorten nor extend it.
- When *every* upstream that could take a request is cooling down, the pool would refuse all
  traffic for a whole cooldown although one may have recovered at once. With
  ``probe_interval_seconds`` set, a trickle still goes through (Envoy's panic threshold, one
  request at a time): at most one *probe* per interval, and one in flight, to the upstream
  ejected longest ago. A probe that succeeds makes that upstream healthy at once; one that
  fails ejects it again (so probes rotate through the pool). The first probe comes an
  interval after the last ejection.

A pool of one upstream has no schedule to share, only health. Once a pick finds its upstream
clean (no failures, not ejected, not on trial), this process picks it locally for
``clean_cache_seconds`` without asking Redis; a failure reported here ends that at once, and an
ejection decided by another process is seen here within that bound (plus one round trip: once
the time is up, one request asks Redis again while the others of this process keep picking it
locally, so a burst of concurrent requests costs one round trip, not one each).

Every decision runs atomically in one Lua script (one round trip) on the Redis server's clock
(``TIME``), so processes with drifting clocks agree. Every key carries a TTL: state untouched
for ``state_ttl_seconds`` (plus any cooldown still running) disappears, so nothing grows
without bound. Keys share the hash tag ``{pool_id}`` so each script stays in one Redis
Cluster slot. Redis errors propagate as ``redis.exceptions.RedisError``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence, Set
from dataclasses import dataclass
from typing import Any, NamedTuple

from flask import current_app
from redis import Redis

from app.metrics import instruments as metrics
from app.store.redis import get_redis

__all__ = ["Pick", "Upstream", "UpstreamBalancer"]

# KEYS[1]          hash: upstream URL -> smooth-WRR current weight
# KEYS[1 + i]      health hash of upstream i: failures, until (ejected until, ms)
# KEYS[1 + n + i]  trial lock of upstream i (held while its half-open trial is in flight)
# KEYS[2 + 2n]     the pool's probe gate (set while the next probe must wait)
# ARGV[1]          TTL of the weights hash (ms);  ARGV[2] TTL of a trial lock (ms)
# ARGV[3 + 3(i-1) .. 5 + 3(i-1)]  URL, weight, excluded (0|1) of upstream i
# ARGV[3 + 3n]     probe interval (ms; 0: no probes)
# Returns {0-based index of the chosen upstream, or -1 when none can take the request;
#          1 if the chosen one has health state (failures, ejection, trial) to clear, else 0;
#          1 if it is a probe of an upstream still cooling down, else 0}.
_PICK_LUA = """
local n = (#KEYS - 2) / 2
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local urls, weights, excluded = {}, {}, {}
for i = 1, n do
    urls[i] = ARGV[3 * i]
    weights[i] = tonumber(ARGV[3 * i + 1])
    excluded[i] = ARGV[3 * i + 2] == '1'
end

local stored = redis.call('HMGET', KEYS[1], unpack(urls))
local current, total = {}, 0
local best, best_trial = nil, false
for i = 1, n do
    current[i] = tonumber(stored[i]) or 0
    local usable, trial = weights[i] > 0 and not excluded[i], false
    if usable then
        local ejected_until = tonumber(redis.call('HGET', KEYS[1 + i], 'until'))
        if ejected_until then
            if ejected_until > now or redis.call('EXISTS', KEYS[1 + n + i]) == 1 then
                usable = false  -- cooling down, or its one half-open trial is in flight
            else
                trial = true
            end
        end
    end
    if usable then
        current[i] = current[i] + weights[i]
        total = total + weights[i]
        if best == nil or current[i] > current[best] then
            best, best_trial = i, trial
        end
    end
end
if best == nil then
    -- Every upstream that could take it is cooling down: probe the one ejected longest ago,
    -- one at a time and at most once per interval.
    local interval = tonumber(ARGV[3 * n + 3])
    local oldest, oldest_until = nil, nil
    for i = 1, n do
        if interval > 0 and weights[i] > 0 and not excluded[i] then
            local ejected_until = tonumber(redis.call('HGET', KEYS[1 + i], 'until'))
            if ejected_until and redis.call('EXISTS', KEYS[1 + n + i]) == 0
                    and (oldest == nil or ejected_until < oldest_until) then
                oldest, oldest_until = i, ejected_until
            end
        end
    end
    if oldest == nil or not redis.call('SET', KEYS[2 + 2 * n], '1', 'PX', interval, 'NX') then
        return {-1, 0, 0}
    end
    redis.call('SET', KEYS[1 + n + oldest], '1', 'PX', ARGV[2], 'NX')
    return {oldest - 1, 1, 1}
end

current[best] = current[best] - total
if best_trial then
    redis.call('SET', KEYS[1 + n + best], '1', 'PX', ARGV[2], 'NX')
end
-- Rewrite the whole hash so URLs that left the pool do not linger in it.
local fields = {}
for i = 1, n do
    fields[2 * i - 1] = urls[i]
    fields[2 * i] = current[i]
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {best - 1, redis.call('EXISTS', KEYS[1 + best]), 0}
"""

# KEYS[1] health hash, KEYS[2] trial lock, KEYS[3] the pool's probe gate
# ARGV[1] failure threshold, ARGV[2] cooldown (ms), ARGV[3] TTL of idle state (ms),
# ARGV[4] 1 if the failed request was a probe, ARGV[5] probe interval (ms; 0: no probes)
# Returns 1 when this failure ejected the upstream, else 0.
_FAILURE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cooldown, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local ejected_until = tonumber(redis.call('HGET', KEYS[1], 'until'))
if ejected_until and ejected_until > now and ARGV[4] ~= '1' then
    return 0  -- from a request sent before the ejection
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if ejected_until or failures >= tonumber(ARGV[1]) then
    -- Threshold reached, or the half-open trial (or a probe) failed: (re-)eject.
    redis.call('HSET', KEYS[1], 'until', now + cooldown)
    redis.call('DEL', KEYS[2])
    redis.call('PEXPIRE', KEYS[1], cooldown + ttl)
    if tonumber(ARGV[5]) > 0 then
        redis.call('SET', KEYS[3], '1', 'PX', ARGV[5])  -- the next probe waits an interval
    end
    return 1
end
redis.call('PEXPIRE', KEYS[1], ttl)
return 0
"""

# KEYS[1] health hash, KEYS[2] trial lock; ARGV[1] 1 if the request was a probe.
# Returns 1 when the state was cleared, else 0.
_SUCCESS_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ejected_until = tonumber(redis.call('HGET', KEYS[1], 'until'))
if ejected_until and ejected_until > now and ARGV[1] ~= '1' then
    return 0  -- from a request sent before the ejection
end
return redis.call('DEL', KEYS[1], KEYS[2]) > 0 and 1 or 0
"""


class Pick(NamedTuple):
    """The balancer's choice: the upstream, and whether a success must be reported.

    ``tracked`` is False when the upstream had no health state at pick time (no failures, not
    ejected, not on trial): a success then has nothing to reset, so the caller skips that
    round trip. A failure is always reported. Pass ``probe`` back with either report.
    """

    upstream: Upstream
    tracked: bool
    probe: bool = False  # a probe of an upstream still cooling down: report it as such


@dataclass(frozen=True)
class Upstream:
    """One target of a pool: base URL and relative weight (0 takes no traffic)."""

    url: str
    weight: int = 1

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("upstream url must not be empty")
        if self.weight < 0:
            raise ValueError("upstream weight must be >= 0")


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class UpstreamBalancer:
    """Smooth weighted round robin with passive ejection; safe across threads and processes.

    Args:
        redis: client for the shared state (``decode_responses`` either way).
        prefix: prefix of every Redis key.
        failure_threshold: consecutive failures that eject an upstream.
        cooldown_seconds: how long an ejected upstream gets no traffic before a trial.
        trial_timeout_seconds: how long a half-open trial may stay unreported before
            another one is allowed.
        state_ttl_seconds: idle time after which a pool's state is forgotten.
        clean_cache_seconds: how long a one-upstream pool found clean is picked without Redis
            (0 = always ask).
        probe_interval_seconds: with every upstream cooling down, how often one probe may go
            through (0 = never: the pool refuses traffic for the whole cooldown).
    """

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "sb:gw:",
        failure_threshold: int = 3,
        cooldown_seconds: float = 30,
        trial_timeout_seconds: float = 10,
        state_ttl_seconds: float = 3600,
        clean_cache_seconds: float = 0,
        probe_interval_seconds: float = 0,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        for name, value in (
            ("cooldown_seconds", cooldown_seconds),
            ("trial_timeout_seconds", trial_timeout_seconds),
            ("state_ttl_seconds", state_ttl_seconds),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be > 0")
        self.redis = redis
        self.prefix = prefix
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = cooldown_seconds
        self.trial_timeout_seconds = trial_timeout_seconds
        self.state_ttl_seconds = state_ttl_seconds
        self.clean_cache_seconds = clean_cache_seconds
        self.probe_interval_seconds = probe_interval_seconds
        # (pool, url) of one-upstream pools -> monotonic time until which it is picked locally
        self._clean_until: dict[tuple[str, str], float] = {}
        # (pool, url) -> monotonic time of the last failure reported here
        self._failed_at: dict[tuple[str, str], float] = {}
        # (pool, url) of clean one-upstream pools whose expired cache one request is renewing
        self._refreshing: set[tuple[str, str]] = set()
        self._local = threading.Lock()  # guards the three
        self._pick = redis.register_script(_PICK_LUA)
        self._failure = redis.register_script(_FAILURE_LUA)
        self._success = redis.register_script(_SUCCESS_LUA)

    def _key(self, pool_id: str, kind: str, url: str = "") -> str:
        # {pool_id} is a Redis Cluster hash tag: one pool's keys share a slot.
        key = f"{self.prefix}{{{pool_id}}}:{kind}"
        return f"{key}:{url}" if url else key

    def health_key(self, pool_id: str, url: str) -> str:
        """Redis hash holding the passive-health state of ``url`` in ``pool_id``."""
        return self._key(pool_id, "health", url)

    def trial_key(self, pool_id: str, url: str) -> str:
        """Redis key held while the half-open trial request of ``url`` is in flight."""
        return self._key(pool_id, "trial", url)

    def _probe_ms(self) -> int:
        return round(self.probe_interval_seconds * 1000) if self.probe_interval_seconds > 0 else 0

    def pick(
        self,
        pool_id: str,
        upstreams: Sequence[Upstream],
        exclude: Set[str] = frozenset(),
    ) -> Pick | None:
        """Choose the upstream for the next request, or ``None`` if none can take it.

        ``exclude`` holds URLs already tried by this request. Picking a half-open upstream
        starts its trial: report the outcome with ``report_success`` (needed only when
        ``Pick.tracked``) / ``report_failure``.

        Raises:
            ValueError: two upstreams share a URL.
        """
        if len({u.url for u in upstreams}) != len(upstreams):
            raise ValueError("upstream URLs in a pool must be unique")
        if not upstreams:
            return None
        only = upstreams[0] if len(upstreams) == 1 and not exclude else None
        asked = time.monotonic()
        refreshing = None
        if only is not None:
            slot = (pool_id, only.url)
            with self._local:
                until = self._clean_until.get(slot, 0)
                if until > asked or (until and slot in self._refreshing):
                    return Pick(only, False)
                if until:  # expired: this request asks Redis, the others wait for no one
                    refreshing = slot
                    self._refreshing.add(slot)
        try:
            return self._pick_in_redis(pool_id, upstreams, exclude, only, asked)
        finally:
            if refreshing is not None:
                with self._local:
                    self._refreshing.discard(refreshing)

    def _pick_in_redis(
        self,
        pool_id: str,
        upstreams: Sequence[Upstream],
        exclude: Set[str],
        only: Upstream | None,
        asked: float,
    ) -> Pick | None:
        keys = [self._key(pool_id, "wrr")]
        keys += [self.health_key(pool_id, u.url) for u in upstreams]
        keys += [self.trial_key(pool_id, u.url) for u in upstreams]
        keys.append(self._key(pool_id, "probe"))
        args: list[Any] = [_ms(self.state_ttl_seconds), _ms(self.trial_timeout_seconds)]
        for upstream in upstreams:
            args += [upstream.url, upstream.weight, 1 if upstream.url in exclude else 0]
        args.append(self._probe_ms())
        index, tracked, probe = self._pick(keys=keys, args=args)
        if int(index) < 0:
            return None
        if int(probe):
            return Pick(upstreams[int(index)], True, probe=True)
        slot = (pool_id, upstreams[int(index)].url)
        # Clean when asked, and no failure reported here since (another thread's would win).
        if only is not None and not int(tracked) and self.clean_cache_seconds > 0:
            with self._local:
                if self._failed_at.get(slot, -1.0) < asked:
                    self._clean_until[slot] = asked + self.clean_cache_seconds
        return Pick(upstreams[int(index)], bool(int(tracked)))

    def report_success(self, pool_id: str, upstream: Upstream, *, probe: bool = False) -> None:
        """Record a successful request: reset failures and close a half-open (or probed)
        upstream."""
        self._success(
            keys=[self.health_key(pool_id, upstream.url), self.trial_key(pool_id, upstream.url)],
            args=[1 if probe else 0],
        )

    def report_failure(self, pool_id: str, upstream: Upstream, *, probe: bool = False) -> bool:
        """Record a failed request; return True if this failure ejected the upstream."""
        slot = (pool_id, upstream.url)
        with self._local:
            self._failed_at[slot] = time.monotonic()
            self._clean_until.pop(slot, None)
        ejected = self._failure(
            keys=[
                self.health_key(pool_id, upstream.url),
                self.trial_key(pool_id, upstream.url),
                self._key(pool_id, "probe"),
            ],
            args=[
                self.failure_threshold,
                _ms(self.cooldown_seconds),
                _ms(self.state_ttl_seconds),
                1 if probe else 0,
                self._probe_ms(),
            ],
        )
        if int(ejected):
            metrics.gateway_ejection(pool_id, upstream.url)
        return bool(int(ejected))

    def state(self, pool_id: str, upstreams: Sequence[Upstream]) -> list[dict[str, Any]]:
        """Health of each upstream, for diagnostics.

        Each entry: ``url``, ``weight``, ``healthy`` (takes normal traffic), ``half_open``
        (cooldown over, admitting one trial at a time), ``consecutive_failures`` and
        ``ejected_until`` (Unix time in seconds by the Redis clock, or None).
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        for upstream in upstreams:
            pipe.hmget(self.health_key(pool_id, upstream.url), ["failures", "until"])
        (seconds, micros), *healths = pipe.execute()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        result = []
        for upstream, (failures, until) in zip(upstreams, healths, strict=True):
            until_ms = int(until) if until is not None else None
            result.append(
                {
                    "url": upstream.url,
                    "weight": upstream.weight,
                    "healthy": until_ms is None,
                    "half_open": until_ms is not None and until_ms <= now_ms,
                    "consecutive_failures": int(failures or 0),
                    "ejected_until": until_ms / 1000 if until_ms is not None else None,
                }
            )
        return result


def gateway_balancer() -> UpstreamBalancer:
    """This app's balancer (made on first use from the gateway settings)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    balancer: UpstreamBalancer | None = app.extensions.get("balancer")
    if balancer is None:
        balancer = UpstreamBalancer(
            get_redis(),
            failure_threshold=app.config["GATEWAY_FAILURE_THRESHOLD"],
            cooldown_seconds=app.config["GATEWAY_COOLDOWN_SECONDS"],
            clean_cache_seconds=app.config["GATEWAY_HEALTH_CACHE_SECONDS"],
            probe_interval_seconds=app.config["GATEWAY_PROBE_INTERVAL"],
        )
        app.extensions["balancer"] = balancer
    return balancer
