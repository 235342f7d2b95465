"""Rate limiter and usage counters against the session's Redis (flushed per test)."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator

import pytest
import redis

from app.limits import usage
from app.limits.limiter import BUCKETS, MAX_LEASE, RateLimitDecision, RateLimiter
from tests.conftest import session_redis_url

REDIS_URL = session_redis_url()


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def r2() -> Iterator[redis.Redis]:
    """A second client, standing in for another process."""
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def _counted(r: redis.Redis, key: str) -> dict[int, int]:
    """The limiter's state: slice number -> requests admitted in it."""
    return {int(k): int(v) for k, v in r.hgetall(key).items()}


def test_limit_counts_down_then_denies_without_consuming(r: redis.Redis) -> None:
    limiter = RateLimiter(r)
    decisions = [limiter.hit("key_a", 5) for _ in range(5)]
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    assert all(1 <= d.reset_after <= 3600 + 3600 // BUCKETS for d in decisions)
    assert all(d.retry_after == 0 for d in decisions)

    state = _counted(r, limiter.key("key_a"))
    assert sum(state.values()) == 5
    denied = [limiter.hit("key_a", 5) for _ in range(3)]
    for d in denied:
        assert not d.allowed
        assert d.remaining == 0
        assert 1 <= d.retry_after <= 3600 + 3600 // BUCKETS
        assert d.reset_after == d.retry_after
    # Denied hits wrote nothing: the same five requests in the same slices, so the wait never
    # grows.
    assert _counted(r, limiter.key("key_a")) == state
    assert denied[-1].retry_after <= denied[0].retry_after
    assert 0 < r.pttl(limiter.key("key_a")) <= (3600 + 3600 / BUCKETS) * 1000
    # Other keys are independent.
    assert limiter.hit("key_b", 5).remaining == 4


def test_fresh_key_and_validation(r: redis.Redis) -> None:
    limiter = RateLimiter(r)
    first = limiter.hit("key_new", 1)
    assert first.allowed and first.remaining == 0
    with pytest.raises(ValueError):
        limiter.hit("key_new", 0)
    with pytest.raises(ValueError):
        RateLimiter(r, window_seconds=0)


def _hammer(url: str, key_id: str, limit: int, hits: int) -> int:
    client = redis.Redis.from_url(url)
    try:
        limiter = RateLimiter(client)
        return sum(limiter.hit(key_id, limit).allowed for _ in range(hits))
    finally:
        client.close()


def test_exact_across_processes(r: redis.Redis) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        admitted = pool.starmap(_hammer, [(REDIS_URL, "key_conc", 50, 20)] * 4)
    assert sum(admitted) == 50
    assert sum(_counted(r, RateLimiter(r).key("key_conc")).values()) == 50


def test_short_window_readmits_after_honest_retry_after(r: redis.Redis) -> None:
    limiter = RateLimiter(r, window_seconds=2, policy="2s")
    assert limiter.hit("key_s", 2).allowed
    assert limiter.hit("key_s", 2).allowed
    denied = limiter.hit("key_s", 2)
    assert not denied.allowed
    assert 1 <= denied.retry_after <= 3  # 2 s, plus at most one slice, rounded up
    time.sleep(denied.retry_after)
    again = limiter.hit("key_s", 2)
    assert again.allowed
    assert again.policy_header() == '"2s";q=2;w=2'


def test_retry_after_when_limit_was_lowered(r: redis.Redis) -> None:
    limiter = RateLimiter(r, window_seconds=3)
    assert limiter.hit("key_l", 10).allowed  # t0
    time.sleep(1.0)
    assert limiter.hit("key_l", 10).allowed  # t0 + 1
    # Limit 2: one request must leave (the oldest, at t0 + 3 plus at most one 50 ms slice),
    # about 2 s away; rounded up, so 2 or, when the slice boundary falls past it, 3.
    assert limiter.hit("key_l", 2).retry_after in (2, 3)
    # Limit 1: both must leave; the newer one goes at t0 + 4 (+ a slice), about 3 s away.
    lowered = limiter.hit("key_l", 1)
    assert not lowered.allowed
    assert lowered.remaining == 0
    assert lowered.retry_after in (3, 4)


def test_never_more_than_the_limit_in_any_rolling_window(r: redis.Redis) -> None:
    """Hammer a 1 s window for 2.5 s: every ``limit + 1``-th admission is a window apart.

    The bound is checked without trusting client clocks to be the server's: admission j
    happened (on Redis's clock) no later than its reply arrived, and admission i no earlier than
    its request was sent, so ``received[j] - sent[i]`` can only overstate the server's gap.
    """
    limiter = RateLimiter(r, window_seconds=1, policy="1s")
    limit = 5
    admitted: list[tuple[float, float]] = []
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        sent = time.monotonic()
        decision = limiter.hit("key_w", limit)
        if decision.allowed:
            admitted.append((sent, time.monotonic()))
    assert len(admitted) >= 2 * limit  # quota came back after a window
    for i in range(len(admitted) - limit):
        assert admitted[i + limit][1] - admitted[i][0] >= 1.0


def test_state_is_bounded_whatever_the_rate(r: redis.Redis) -> None:
    limiter = RateLimiter(r, window_seconds=1, policy="1s")
    end = time.monotonic() + 1.5
    hits = 0
    while time.monotonic() < end:
        limiter.hit("key_busy", 1_000_000)
        hits += 1
    state = _counted(r, limiter.key("key_busy"))
    assert len(state) <= BUCKETS + 1
    assert sum(state.values()) < hits  # slices older than the window were dropped
    assert r.memory_usage(limiter.key("key_busy")) < 2048


# --- leases (RATELIMIT_LEASE_SECONDS) ------------------------------------------------------


def _round_trips(limiter: RateLimiter) -> list[int]:
    """Count the limiter's script calls from now on (one per round trip to Redis)."""
    calls: list[int] = []
    script = limiter._script

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return script(*args, **kwargs)

    limiter._script = counted  # type: ignore[assignment]
    return calls


def test_a_busy_key_leases_requests_and_skips_most_round_trips(r: redis.Redis) -> None:
    limiter = RateLimiter(r, lease_seconds=5)
    trips = _round_trips(limiter)
    decisions = [limiter.hit("key_lease", 1_000_000) for _ in range(500)]
    assert all(d.allowed for d in decisions)
    # Leases of 1, 2, 4, ... 64 requests: 127 after seven round trips, then 64 at a time.
    assert len(trips) == 7 + -(-(500 - 127) // MAX_LEASE)
    counted = sum(_counted(r, limiter.key("key_lease")).values())
    assert 500 <= counted < 500 + MAX_LEASE  # counted ahead: at most one lease's remainder
    # What a lease admits carries the headers of its grant (remaining as counted then).
    assert decisions[-1].remaining == 1_000_000 - counted


def test_a_quiet_key_asks_for_one_request_at_a_time(r: redis.Redis) -> None:
    limiter = RateLimiter(r, lease_seconds=0.05)
    trips = _round_trips(limiter)
    for _ in range(4):
        assert limiter.hit("key_quiet", 1_000_000).allowed
        time.sleep(0.08)  # each lease ends before the next request
    assert len(trips) == 4
    assert sum(_counted(r, limiter.key("key_quiet")).values()) == 4  # nothing counted unused


def _lease_hammer(url: str, key_id: str, limit: int) -> int:
    """Hit until denied twice in a row (every lease of this process used up); return admitted."""
    client = redis.Redis.from_url(url)
    try:
        limiter = RateLimiter(client, lease_seconds=30)
        admitted = denied = 0
        while denied < 2:
            if limiter.hit(key_id, limit).allowed:
                admitted, denied = admitted + 1, 0
            else:
                denied += 1
        return admitted
    finally:
        client.close()


@pytest.mark.parametrize("limit", [50, 5_000])
def test_leases_admit_exactly_the_limit_across_processes(r: redis.Redis, limit: int) -> None:
    """Four processes leasing from one key: together they admit the limit, never more, and
    Redis counts exactly what was admitted (every leased request was used)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        admitted = pool.starmap(_lease_hammer, [(REDIS_URL, f"key_l{limit}", limit)] * 4)
    assert sum(admitted) == limit
    assert sum(_counted(r, RateLimiter(r).key(f"key_l{limit}")).values()) == limit


def test_a_lease_is_bound_to_the_watched_value_and_can_be_dropped(r: redis.Redis) -> None:
    limiter = RateLimiter(r, lease_seconds=30)
    trips = _round_trips(limiter)
    r.set("epoch", "one")
    for _ in range(3):  # leases of 1 then 2: the third request is admitted locally
        decision = limiter.hit("key_e", 1_000_000, watch="epoch", expect="one")
        assert decision.counted and decision.watched == "one"
    assert len(trips) == 2
    # A request expecting another value goes to Redis, which does not count it.
    stale = limiter.hit("key_e", 1_000_000, watch="epoch", expect="two")
    assert not stale.counted and stale.watched == "one" and len(trips) == 3
    limiter.forget_leases()
    assert limiter.hit("key_e", 1_000_000, watch="epoch", expect="one").counted
    assert len(trips) == 4
    with pytest.raises(ValueError):
        RateLimiter(r, lease_seconds=-1)


def test_a_lease_ends_with_its_slice_so_no_window_admits_more(
    r: redis.Redis, r2: redis.Redis
) -> None:
    """A 3 s window has 50 ms slices: a lease of 10 s must still end with its slice, or the
    requests it admits later would leave the window early and make room for more.

    The count is taken within one window; a machine too busy to make the requests in time
    (the window moved on, legitimately admitting more) repeats the round with a fresh key.
    """
    window, limit = 3.0, 64 * 100
    leasing = RateLimiter(r, window_seconds=window, policy="3s", lease_seconds=10)
    other = RateLimiter(r2, window_seconds=window, policy="3s")
    for round_ in range(5):
        key = f"key_edge_{round_}"
        while not leasing._leases.get(key) or leasing._leases[key].left < 8:
            assert leasing.hit(key, limit).allowed  # until it holds a lease worth using
        time.sleep(window + 0.1)  # everything counted so far has left the window
        started, admitted = time.monotonic(), 0
        while other.hit(key, limit).allowed:
            admitted += 1
        while leasing.hit(key, limit).allowed:
            admitted += 1
        if time.monotonic() - started < window - 0.5:
            break
    else:
        pytest.skip("the machine never made 6,400 requests within one window")
    assert admitted <= limit


def test_what_a_lease_did_not_admit_is_given_back(r: redis.Redis) -> None:
    limiter = RateLimiter(r, lease_seconds=0.05)
    admitted = 0
    for _ in range(3):  # bursts shorter than what their leases counted, then a pause
        for _ in range(40):
            admitted += limiter.hit("key_back", 1_000_000).allowed
        time.sleep(0.08)
    admitted += limiter.hit("key_back", 1_000_000).allowed
    counted = sum(_counted(r, limiter.key("key_back")).values())
    assert counted == admitted + limiter._leases["key_back"].left  # only the live lease ahead


def test_a_grant_that_crossed_forget_leases_is_not_kept(r: redis.Redis) -> None:
    limiter = RateLimiter(r, lease_seconds=30)
    script = limiter._script

    def revoked_meanwhile(*args: object, **kwargs: object) -> object:
        reply = script(*args, **kwargs)
        limiter.forget_leases()  # an epoch bump in this process while the grant was in flight
        return reply

    limiter._script = revoked_meanwhile  # type: ignore[assignment]
    assert limiter.hit("key_race", 1_000_000).allowed
    assert limiter._leases == {}


def test_headers() -> None:
    allowed = RateLimitDecision(
        allowed=True, limit=1000, remaining=999, reset_after=3600, retry_after=0
    )
    assert allowed.policy_header() == '"hour";q=1000;w=3600'
    assert allowed.limit_header() == '"hour";r=999;t=3600'
    assert allowed.headers() == {
        "RateLimit-Policy": '"hour";q=1000;w=3600',
        "RateLimit": '"hour";r=999;t=3600',
    }
    denied = RateLimitDecision(
        allowed=False,
        limit=5,
        remaining=0,
        reset_after=17,
        retry_after=17,
        window_seconds=60,
        policy='min"ute',
    )
    assert denied.policy_header() == '"min\\"ute";q=5;w=60'
    assert denied.headers()["Retry-After"] == "17"


def test_redis_errors_propagate() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    with pytest.raises(redis.exceptions.RedisError):
        RateLimiter(dead).hit("key_x", 5)
    dead.close()


def test_usage_hourly_buckets(r: redis.Redis) -> None:
    current_hour = int(time.time()) // 3600 * 3600
    earlier = current_hour - 3600 + 5
    buf = usage.UsageBuffer(r)
    for status in (200, 201, 204, 404):
        buf.count("key_u", status=status, now=earlier)
    buf.count("key_u", status=200, gateway_bytes=1500, now=current_hour + 10)
    buf.count("key_u", status=302, gateway_bytes=500, now=current_hour + 20)
    buf.count("key_u", status=429, rate_limited=True, now=current_hour + 30)
    buf.count("key_u", status=502, now=current_hour + 40)
    buf.count("key_other", status=200, now=current_hour + 40)
    assert r.keys("sb:usage:*") == []  # buffered: nothing written before the flush
    buf.flush()

    buckets = usage.read(r, "key_u", 24, now=current_hour + 50)
    assert len(buckets) == 24
    prev, last = buckets[-2], buckets[-1]
    assert prev == {
        "hour": time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(current_hour - 3600)),
        "requests": 4,
        "2xx": 3,
        "3xx": 0,
        "4xx": 1,
        "5xx": 0,
        "rate_limited": 0,
        "gateway_bytes": 0,
    }
    assert last == {
        "hour": time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(current_hour)),
        "requests": 4,
        "2xx": 1,
        "3xx": 1,
        "4xx": 1,
        "5xx": 1,
        "rate_limited": 1,
        "gateway_bytes": 2000,
    }
    for bucket in buckets[:-2]:
        assert bucket["requests"] == 0 and bucket["gateway_bytes"] == 0
    hours = [b["hour"] for b in buckets]
    assert hours == sorted(hours) and len(set(hours)) == 24

    ttl = r.ttl(f"sb:usage:key_u:{current_hour // 3600}")
    assert 0 < ttl <= 8 * 24 * 3600
    with pytest.raises(ValueError):
        usage.read(r, "key_u", 0)
    with pytest.raises(ValueError):
        usage.read(r, "key_u", usage.MAX_HOURS + 1)


def _slow_round_trips(limiter: RateLimiter, seconds: float) -> list[int]:
    """Count the limiter's round trips and make each take ``seconds`` (a distant Redis), so
    concurrent requests overlap them."""
    calls: list[int] = []
    script = limiter._script

    def slow(*args: object, **kwargs: object) -> object:
        calls.append(1)
        time.sleep(seconds)
        return script(*args, **kwargs)

    limiter._script = slow  # type: ignore[assignment]
    return calls


def _burst(limiter: RateLimiter, key_id: str, limit: int, count: int) -> list[RateLimitDecision]:
    """``count`` threads hitting ``key_id`` at the same moment."""
    import threading

    barrier = threading.Barrier(count)
    decisions: list[RateLimitDecision] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        decision = limiter.hit(key_id, limit)
        with lock:
            decisions.append(decision)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return decisions


def test_a_burst_renews_a_lease_with_one_round_trip_at_a_time(r: redis.Redis) -> None:
    """Forty requests at once: one asks Redis while the others wait for its lease, instead of
    forty round trips (the herd a gevent worker sends when an upstream answers them together)."""
    limiter = RateLimiter(r, lease_seconds=5)
    trips = _slow_round_trips(limiter, 0.05)
    decisions = _burst(limiter, "key_burst", 1_000_000, 40)
    assert len(decisions) == 40 and all(d.allowed for d in decisions)
    assert len(trips) <= 8  # leases of 1, 2, 4, 8, 16, 32: six, a couple more if threads lag
    counted = sum(_counted(r, limiter.key("key_burst")).values())
    assert 40 <= counted < 40 + MAX_LEASE


def test_a_burst_past_the_limit_is_still_exact_with_leases(r: redis.Redis) -> None:
    limiter = RateLimiter(r, lease_seconds=5)
    _slow_round_trips(limiter, 0.005)
    decisions = _burst(limiter, "key_exact", 50, 80)
    assert sum(d.allowed for d in decisions) == 50
    assert sum(_counted(r, limiter.key("key_exact")).values()) == 50
