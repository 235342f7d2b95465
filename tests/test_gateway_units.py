"""Gateway building blocks: request transformation and the Redis-backed upstream balancer.

Balancer tests use the session's Redis (see ``conftest.py``), flushed per test.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import redis

from app.gateway.balancer import Pick, Upstream, UpstreamBalancer
from app.gateway.transform import TRANSFORM_SCHEMA, apply_request_transform
from tests.conftest import session_redis_url

REDIS_URL = session_redis_url()

A = Upstream("http://127.0.0.1:9001", 3)
B = Upstream("http://127.0.0.1:9002", 1)


# --- transform -------------------------------------------------------------------------------


def test_each_operation_on_headers_case_insensitively() -> None:
    headers = [("Host", "api.example"), ("X-Secret", "s"), ("x-old", "o1"), ("X-Old", "o2")]
    config = {
        "remove": {"headers": ["x-secret"]},
        "rename": {"headers": {"X-OLD": "X-New", "X-Missing": "X-Never"}},
        "replace": {"headers": {"host": "upstream.example", "X-Absent": "nope"}},
        "add": {"headers": {"HOST": "ignored", "X-Added": "yes"}},
        "append": {"headers": {"x-new": "o3", "X-Tag": ["a", "b"]}},
    }
    out_headers, out_query = apply_request_transform(config, headers, [])
    assert out_headers == [
        ("Host", "upstream.example"),
        ("X-New", "o1"),
        ("X-New", "o2"),
        ("X-Added", "yes"),
        ("x-new", "o3"),
        ("X-Tag", "a"),
        ("X-Tag", "b"),
    ]
    assert out_query == []


def test_rename_overwrites_existing_target_and_can_change_case() -> None:
    headers = [("X-A", "1"), ("x-b", "old"), ("x-c", "3")]
    config = {"rename": {"headers": {"x-a": "X-B", "X-C": "X-C"}}}
    out, _ = apply_request_transform(config, headers, [])
    assert out == [("X-B", "1"), ("X-C", "3")]


def test_operations_apply_in_kong_order() -> None:
    # remove before add: the removed header is added back fresh.
    # rename before replace: replace sees the renamed header.
    # replace before add: add is ignored for a header that replace just set.
    # add before append: append stacks onto the added value.
    config = {
        "append": {"headers": {"X-Stack": "2"}, "querystring": {"page": "9"}},
        "add": {"headers": {"X-Drop": "fresh", "X-Stack": "1", "X-Renamed": "lost"}},
        "replace": {"headers": {"X-Renamed": "replaced"}},
        "rename": {"headers": {"X-Orig": "X-Renamed"}},
        "remove": {"headers": ["X-Drop"], "querystring": ["page"]},
    }
    headers = [("X-Drop", "stale"), ("X-Orig", "v")]
    out_headers, out_query = apply_request_transform(config, headers, [("page", "1")])
    assert out_headers == [
        ("X-Renamed", "replaced"),
        ("X-Drop", "fresh"),
        ("X-Stack", "1"),
        ("X-Stack", "2"),
    ]
    assert out_query == [("page", "9")]


def test_querystring_is_ordered_multi_valued_and_case_sensitive() -> None:
    query = [("tag", "a"), ("q", "x"), ("tag", "b"), ("Tag", "C"), ("key", "secret")]
    config = {
        "remove": {"querystring": ["key"]},
        "rename": {"querystring": {"q": "search", "absent": "never"}},
        "replace": {"querystring": {"tag": "z", "missing": "nope"}},
        "add": {"querystring": {"search": "ignored", "limit": "10"}},
        "append": {"querystring": {"tag": ["y", "w"]}},
    }
    _, out = apply_request_transform(config, [], query)
    assert out == [
        ("tag", "z"),
        ("search", "x"),
        ("Tag", "C"),
        ("limit", "10"),
        ("tag", "y"),
        ("tag", "w"),
    ]


def test_inputs_are_not_mutated_and_empty_config_copies() -> None:
    headers = [("X-A", "1"), ("X-B", "2")]
    query = [("a", "1")]
    config = {
        "remove": {"headers": ["x-a"]},
        "append": {"headers": {"X-B": "3"}, "querystring": {"a": "2"}},
    }
    snapshot = copy.deepcopy((config, headers, query))
    out_headers, out_query = apply_request_transform(config, headers, query)
    assert (config, headers, query) == snapshot
    assert out_headers == [("X-B", "2"), ("X-B", "3")]
    assert out_query == [("a", "1"), ("a", "2")]

    same_headers, same_query = apply_request_transform({}, headers, query)
    assert same_headers == headers and same_headers is not headers
    assert same_query == query and same_query is not query


def test_schema_accepts_full_config_and_rejects_bad_ones() -> None:
    jsonschema.Draft202012Validator.check_schema(TRANSFORM_SCHEMA)
    validator = jsonschema.Draft202012Validator(TRANSFORM_SCHEMA)
    good = {
        "remove": {"headers": ["Authorization"], "querystring": ["api_key"]},
        "rename": {"headers": {"X-A": "X-B"}, "querystring": {"q": "query"}},
        "replace": {"headers": {"Host": "example.com"}, "querystring": {"v": "2"}},
        "add": {"headers": {"X-Via": "switchboard"}, "querystring": {"limit": "10"}},
        "append": {"headers": {"X-Tag": ["a", "b"]}, "querystring": {"tag": "c"}},
    }
    assert validator.is_valid(good)
    assert validator.is_valid({})
    bad = [
        {"delete": {"headers": ["x"]}},  # unknown operation
        {"remove": {"body": ["x"]}},  # unsupported part
        {"remove": {"headers": "X-A"}},  # not a list
        {"add": {"headers": {"X-A": "ok\r\nX-Injected: 1"}}},  # header injection
        {"add": {"headers": {"Bad Name": "v"}}},  # not a header token
        {"rename": {"headers": {"X-A": "bad name"}}},
        {"replace": {"querystring": {"n": 1}}},  # values are strings
        {"append": {"headers": {"X-A": []}}},
        {"add": {"querystring": {"": "v"}}},
    ]
    for config in bad:
        assert not validator.is_valid(config), config


# --- balancer --------------------------------------------------------------------------------


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def r2() -> Iterator[redis.Redis]:
    """A second, independent client, standing in for another web process."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


def _pick(balancer: UpstreamBalancer, *args: Any, **kwargs: Any) -> Upstream | None:
    picked = balancer.pick(*args, **kwargs)
    return picked.upstream if picked else None


def test_weighted_round_robin_is_exact_and_interleaved(r: redis.Redis) -> None:
    balancer = UpstreamBalancer(r)
    picks = [_pick(balancer, "int_wrr", [A, B]) for _ in range(300)]
    assert Counter(p.url for p in picks if p) == {A.url: 225, B.url: 75}
    # Smooth WRR interleaves instead of sending bursts: A A B A, repeated.
    assert [p.url if p else None for p in picks[:8]] == [A.url, A.url, B.url, A.url] * 2


def test_round_robin_is_shared_by_separate_clients(r: redis.Redis, r2: redis.Redis) -> None:
    one, two = UpstreamBalancer(r), UpstreamBalancer(r2)
    counts: Counter[str] = Counter()
    for i in range(300):
        balancer = one if i % 2 else two
        picked = _pick(balancer, "int_shared", [A, B])
        assert picked is not None
        counts[picked.url] += 1
    assert counts == {A.url: 225, B.url: 75}


def test_exclude_and_zero_weight(r: redis.Redis) -> None:
    balancer = UpstreamBalancer(r)
    idle = Upstream("http://127.0.0.1:9003", 0)
    for _ in range(10):
        assert _pick(balancer, "int_ex", [A, B, idle], exclude={A.url}) == B
    assert _pick(balancer, "int_ex", [A, B], exclude={A.url, B.url}) is None
    assert _pick(balancer, "int_ex", [idle]) is None
    assert _pick(balancer, "int_ex", []) is None
    with pytest.raises(ValueError):
        _pick(balancer, "int_ex", [A, Upstream(A.url, 1)])
    with pytest.raises(ValueError):
        Upstream("http://x", -1)


def test_ejection_after_threshold_moves_traffic(r: redis.Redis) -> None:
    balancer = UpstreamBalancer(r, failure_threshold=3, cooldown_seconds=30)
    pool = [A, B]
    assert balancer.report_failure("int_ej", A) is False
    assert balancer.report_failure("int_ej", A) is False
    assert balancer.state("int_ej", pool)[0]["consecutive_failures"] == 2
    assert all(_pick(balancer, "int_ej", pool) is not None for _ in range(4))
    assert balancer.report_failure("int_ej", A) is True

    assert {_pick(balancer, "int_ej", pool) for _ in range(20)} == {B}
    a_state, b_state = balancer.state("int_ej", pool)
    assert a_state["healthy"] is False and a_state["half_open"] is False
    assert a_state["consecutive_failures"] == 3
    assert a_state["ejected_until"] == pytest.approx(time.time() + 30, abs=5)
    assert b_state == {
        "url": B.url,
        "weight": 1,
        "healthy": True,
        "half_open": False,
        "consecutive_failures": 0,
        "ejected_until": None,
    }
    # Late reports from requests sent before the ejection neither end nor extend it.
    balancer.report_success("int_ej", A)
    assert balancer.report_failure("int_ej", A) is False
    assert balancer.state("int_ej", pool)[0]["ejected_until"] == a_state["ejected_until"]

    # Every key expires, so state never piles up.
    for key in r.scan_iter("sb:gw:*"):
        assert r.pttl(key) > 0


def test_success_resets_consecutive_failures(r: redis.Redis) -> None:
    balancer = UpstreamBalancer(r, failure_threshold=3)
    for _ in range(2):
        balancer.report_failure("int_reset", A)
    balancer.report_success("int_reset", A)
    for _ in range(2):
        assert balancer.report_failure("int_reset", A) is False
    assert balancer.state("int_reset", [A])[0]["healthy"] is True


def test_pick_says_when_a_success_has_state_to_clear(r: redis.Redis) -> None:
    balancer = UpstreamBalancer(r, failure_threshold=3)
    assert balancer.pick("int_tr", [A]) == Pick(A, tracked=False)  # clean: nothing to report
    balancer.report_failure("int_tr", A)
    assert balancer.pick("int_tr", [A]) == Pick(A, tracked=True)
    balancer.report_success("int_tr", A)
    assert balancer.pick("int_tr", [A]) == Pick(A, tracked=False)


def test_a_clean_single_upstream_is_picked_locally_for_a_bounded_time(
    r: redis.Redis, r2: redis.Redis
) -> None:
    here = UpstreamBalancer(r, failure_threshold=1, cooldown_seconds=30, clean_cache_seconds=2)
    there = UpstreamBalancer(r2, failure_threshold=1, cooldown_seconds=30)
    assert here.pick("int_one", [A]) == Pick(A, tracked=False)  # asks Redis: clean
    assert there.report_failure("int_one", A) is True  # another process ejects it
    assert _pick(there, "int_one", [A]) is None
    # Within the bound this process still picks it without asking Redis ...
    assert here.pick("int_one", [A]) == Pick(A, tracked=False)
    # ... but not for a pool of two (a shared schedule), nor once the bound has passed.
    assert _pick(here, "int_one", [A, B]) == B
    assert _eventually(lambda: _pick(here, "int_one", [A]) is None)

    # A failure reported by this process ends the local picking at once.
    assert here.pick("int_mine", [A]) == Pick(A, tracked=False)
    assert here.report_failure("int_mine", A) is True
    assert _pick(here, "int_mine", [A]) is None
    # Without the option (the default) every pick asks Redis.
    assert there.pick("int_plain", [B]) == Pick(B, tracked=False)
    here.report_failure("int_plain", B)
    assert _pick(there, "int_plain", [B]) is None


def test_a_burst_after_the_clean_cache_ends_costs_one_round_trip(r: redis.Redis) -> None:
    """Twenty requests at once find the cache just expired: one asks Redis, the others keep
    picking the clean upstream meanwhile."""
    import threading

    balancer = UpstreamBalancer(r, clean_cache_seconds=1.0)
    assert balancer.pick("int_burst", [A]) == Pick(A, False)
    time.sleep(1.05)  # past the cache's end
    trips: list[int] = []
    script = balancer._pick

    def slow(*args: object, **kwargs: object) -> object:
        trips.append(1)
        time.sleep(0.2)
        return script(*args, **kwargs)

    balancer._pick = slow  # type: ignore[assignment]
    barrier = threading.Barrier(20)
    picks: list[object] = []

    def one() -> None:
        barrier.wait()
        picks.append(balancer.pick("int_burst", [A]))

    threads = [threading.Thread(target=one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert picks == [Pick(A, False)] * 20
    assert len(trips) == 1


def test_a_failure_reported_during_a_pick_keeps_it_from_being_cached(r: redis.Redis) -> None:
    balancer = UpstreamBalancer(r, failure_threshold=1, clean_cache_seconds=30)
    script = balancer._pick

    def failure_meanwhile(*args: Any, **kwargs: Any) -> Any:
        reply = script(*args, **kwargs)  # clean, as Redis saw it
        assert balancer.report_failure("int_race", A) is True  # another thread's request
        return reply

    balancer._pick = failure_meanwhile  # type: ignore[method-assign]
    assert balancer.pick("int_race", [A]) == Pick(A, tracked=False)
    balancer._pick = script  # type: ignore[method-assign]
    assert _pick(balancer, "int_race", [A]) is None  # asked Redis again: ejected


def test_all_ejected_returns_none(r: redis.Redis) -> None:
    balancer = UpstreamBalancer(r, failure_threshold=1, cooldown_seconds=30)
    balancer.report_failure("int_none", A)
    balancer.report_failure("int_none", B)
    assert _pick(balancer, "int_none", [A, B]) is None


def test_an_all_ejected_pool_lets_one_probe_through_per_interval(
    r: redis.Redis, r2: redis.Redis
) -> None:
    # The interval (2 s) is far longer than the steps that must fall within one, even on a
    # busy machine; the steps that wait for the next interval poll for it.
    options: dict[str, Any] = {
        "failure_threshold": 1,
        "cooldown_seconds": 30,
        "probe_interval_seconds": 2,
    }
    balancer, other = UpstreamBalancer(r, **options), UpstreamBalancer(r2, **options)
    assert balancer.report_failure("int_p", A) is True
    time.sleep(0.01)
    assert balancer.report_failure("int_p", B) is True  # A was ejected longest ago
    assert _pick(balancer, "int_p", [A, B]) is None  # within an interval of the last ejection
    probe = _eventually(lambda: balancer.pick("int_p", [A, B]))
    assert probe == Pick(A, True, probe=True)
    assert _pick(other, "int_p", [A, B]) is None  # one per interval, whichever process asks
    # A late success of a request sent before the ejection changes nothing ...
    other.report_success("int_p", B)
    assert balancer.state("int_p", [A, B])[1]["healthy"] is False
    # ... a failed probe ejects again (B is now the one ejected longest ago) ...
    assert balancer.report_failure("int_p", A, probe=True) is True
    assert _eventually(lambda: balancer.pick("int_p", [A, B])) == Pick(B, True, probe=True)
    # ... and a successful probe makes its upstream healthy at once.
    balancer.report_success("int_p", B, probe=True)
    assert balancer.state("int_p", [A, B])[1]["healthy"] is True
    assert {_pick(balancer, "int_p", [A, B]) for _ in range(5)} == {B}


def test_a_probe_in_flight_blocks_another_to_the_same_upstream(r: redis.Redis) -> None:
    balancer = UpstreamBalancer(
        r, failure_threshold=1, cooldown_seconds=30, probe_interval_seconds=0.2
    )
    balancer.report_failure("int_q", A)
    probe = _eventually(lambda: balancer.pick("int_q", [A]))
    assert probe == Pick(A, True, probe=True)  # never reported
    time.sleep(0.25)  # another interval has passed ...
    assert _pick(balancer, "int_q", [A]) is None  # ... but its trial lock holds until the timeout


def _eventually(produce: Any, timeout: float = 15) -> Any:
    """Poll until ``produce()`` returns something truthy (time in these tests is Redis's clock,
    so a wait is a poll with a generous deadline, never a sleep assumed long enough)."""
    deadline = time.monotonic() + timeout
    while not (value := produce()):
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.02)
    return value


def _eject_and_wait(balancer: UpstreamBalancer, pool_id: str, upstream: Upstream) -> None:
    """Eject ``upstream`` and wait until its cooldown has passed (half-open, no trial taken)."""
    for _ in range(balancer.failure_threshold):
        balancer.report_failure(pool_id, upstream)
    assert _pick(balancer, pool_id, [upstream]) is None
    _eventually(lambda: balancer.state(pool_id, [upstream])[0]["half_open"])


def test_half_open_admits_one_trial_and_success_closes(r: redis.Redis, r2: redis.Redis) -> None:
    balancer = UpstreamBalancer(r, failure_threshold=2, cooldown_seconds=1)
    other = UpstreamBalancer(r2, failure_threshold=2, cooldown_seconds=1)
    _eject_and_wait(balancer, "int_ho", A)
    assert balancer.state("int_ho", [A])[0]["half_open"] is True

    assert _pick(balancer, "int_ho", [A]) == A  # the trial
    assert _pick(balancer, "int_ho", [A]) is None  # only one at a time, in any process
    assert _pick(other, "int_ho", [A]) is None
    assert {_pick(balancer, "int_ho", [A, B]) for _ in range(5)} == {B}

    other.report_success("int_ho", A)
    assert balancer.state("int_ho", [A])[0]["healthy"] is True
    assert all(_pick(balancer, "int_ho", [A]) == A for _ in range(3))


def test_failed_trial_re_ejects_immediately(r: redis.Redis) -> None:
    balancer = UpstreamBalancer(r, failure_threshold=3, cooldown_seconds=1)
    _eject_and_wait(balancer, "int_trial", A)
    assert _pick(balancer, "int_trial", [A]) == A
    assert balancer.report_failure("int_trial", A) is True  # one failure suffices
    assert _pick(balancer, "int_trial", [A]) is None
    assert balancer.state("int_trial", [A])[0]["half_open"] is False

    assert _eventually(lambda: _pick(balancer, "int_trial", [A])) == A  # after the cooldown


def test_lost_trial_expires(r: redis.Redis) -> None:
    balancer = UpstreamBalancer(
        r, failure_threshold=1, cooldown_seconds=0.2, trial_timeout_seconds=2
    )
    balancer.report_failure("int_lost", A)
    assert _eventually(lambda: _pick(balancer, "int_lost", [A])) == A  # trial never reported
    assert _pick(balancer, "int_lost", [A]) is None  # held by the trial lock ...
    assert _eventually(lambda: _pick(balancer, "int_lost", [A])) == A  # ... until it expires


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("http://up.test/base/items/2?x=1#f", "/gw/items/2?x=1#f"),
        ("/base/items/3", "/gw/items/3"),
        ("items/4", "/gw/a/items/4"),  # relative to the requested /base/a/b
        ("http://UP.test/base", "/gw/"),
        ("https://up.test/base/x", None),  # another scheme is another origin
        ("http://up.test/base2/x", None),  # a sibling that only shares a prefix
        ("/elsewhere", None),
        ("//evil.test/base/x", None),
        ("http://other.test:8080/x", "/gw/x"),  # the second upstream
    ],
)
def test_locations_outside_the_upstreams_are_dropped(location, expected):
    from app.gateway.answer_headers import gateway_location

    bases = ["http://up.test/base/", "http://other.test:8080"]
    assert gateway_location(location, "http://up.test/base/a/b", bases, "/gw/") == expected
