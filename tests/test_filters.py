"""Payload filters: the grammar, its semantics, its bounds, and fan-out at publish.

Unit tests pin what each operator means (Outpost's shape, MongoDB's semantics) and check the
index that keeps publishing flat against evaluating every filter; API tests show that a
webhook or subscription filter decides at publish which deliveries exist at all, and that a
bad filter is a 422 naming the place in it.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from app.events.filters import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    FilteredTargets,
    FilterInvalid,
    compile_filter,
)
from tests.conftest import ApiClient

ORDER = {
    "type": "order.paid",
    "data": {
        "status": "paid",
        "amount": 250,
        "currency": "EUR",
        "tags": ["vip", "urgent"],
        "customer": {"tier": "gold", "country": "FR", "email": None},
        "lines": [{"sku": "A-1", "qty": 2}],
        "paid_at": "2025-03-01T10:00:00Z",
        "flag": True,
    },
}


def matches(spec: dict[str, Any], body: dict[str, Any] = ORDER) -> bool:
    compiled = compile_filter(spec)
    assert compiled is not None
    return compiled.matches(body)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"data": {"status": "paid"}}, True),
        ({"data": {"status": "refunded"}}, False),
        ({"data.status": "paid", "data.currency": "EUR"}, True),  # dotted paths, ANDed
        ({"data": {"customer": {"tier": "gold"}}}, True),  # nested objects
        ({"data.customer.tier": {"$eq": "gold"}}, True),
        ({"type": "order.paid"}, True),
        ({"data": {"tags": "urgent"}}, True),  # an array matches when an element does
        ({"data": {"tags": {"$in": ["x", "vip"]}}}, True),
        ({"data": {"tags": {"$nin": ["vip"]}}}, False),
        ({"data": {"tags": {"$neq": "other"}}}, True),
        ({"data": {"amount": {"$gte": 100, "$lt": 500}}}, True),
        ({"data": {"amount": {"$gt": 250}}}, False),
        ({"data": {"amount": {"$lte": 250.0}}}, True),  # 250 == 250.0
        ({"data": {"amount": 250.0}}, True),
        ({"data": {"flag": 1}}, False),  # true is not 1
        ({"data": {"amount": {"$gt": "100"}}}, False),  # numbers compare with numbers only
        ({"data": {"paid_at": {"$gte": "2025-01-01T00:00:00Z"}}}, True),  # strings with strings
        ({"data": {"customer": {"email": None}}}, True),  # null is a value
        ({"data": {"customer.email": {"$exists": True}}}, True),
        ({"data": {"deleted_at": {"$exists": False}}}, True),
        ({"data": {"deleted_at": {"$neq": "x"}}}, True),  # missing matches $neq and $nin
        ({"data": {"deleted_at": {"$nin": ["x"]}}}, True),
        ({"data": {"deleted_at": "x"}}, False),
        ({"data": {"deleted_at": {"$gt": 1}}}, False),
        ({"data.lines.0.sku": "A-1"}, True),  # a digit segment indexes an array
        ({"data.lines.5.sku": "A-1"}, False),
        ({"data.status.deeper": "x"}, False),
        ({"$or": [{"data.status": "refunded"}, {"data.amount": {"$gt": 200}}]}, True),
        ({"$or": [{"data.status": "refunded"}, {"data.amount": {"$gt": 300}}]}, False),
        ({"$and": [{"data.status": "paid"}, {"data.currency": "EUR"}]}, True),
        ({"$not": {"data.status": "paid"}}, False),
        ({"data": {"status": {"$not": {"$in": ["cancelled", "refunded"]}}}}, True),
        ({"data": {"status": {"$not": "paid"}}}, False),
        ({"data": {"customer": {"$or": [{"country": "DE"}, {"tier": "gold"}]}}}, True),
    ],
)
def test_operators_mean_what_the_documentation_says(spec: dict[str, Any], expected: bool) -> None:
    assert matches(spec) is expected


@pytest.mark.parametrize(
    "spec, place",
    [
        ({"data": {"amount": {"$gte": "a", "$lt": [1]}}}, "filter.data.amount.$lt"),
        ({"data": {"amount": {"$between": [1, 2]}}}, "filter.data.amount.$between"),
        ({"$nor": [{"data.x": 1}]}, "filter.$nor"),
        ({"data": {"status": {"$in": "paid"}}}, "filter.data.status.$in"),
        ({"data": {"status": {"$in": [{"a": 1}]}}}, "filter.data.status.$in"),
        ({"data": {"status": {"$eq": 1, "tier": "x"}}}, "filter.data.status"),
        ({"data": {"tags": ["a", "b"]}}, "filter.data.tags"),
        ({"data": {"a..b": 1}}, "filter.data.a..b"),
        ({"data": {"x": {"$exists": "yes"}}}, "filter.data.x.$exists"),
        ({"$or": []}, "filter.$or"),
        ({"$or": [{"data.a": 1}, "nope"]}, "filter.$or.1"),
        ({"data": {"s": {"$in": list(range(101))}}}, "filter.data.s.$in"),
        ({"data": {"s": "x" * 1001}}, "filter.data.s"),
        ("a string", "filter"),
        ({"data": {"x" * 9000: 1}}, "filter"),
    ],
)
def test_a_bad_filter_names_the_place(spec: Any, place: str) -> None:
    with pytest.raises(FilterInvalid) as raised:
        compile_filter(spec)
    assert place in raised.value.errors, raised.value.errors


def test_depth_and_size_are_bounded() -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(MAX_DEPTH):
        deep = {"$not": deep}
    with pytest.raises(FilterInvalid, match="deeper"):
        compile_filter(deep)
    many = {f"data.f{i}": i for i in range(MAX_CONDITIONS + 1)}
    with pytest.raises(FilterInvalid, match="at most"):
        compile_filter(many)
    assert compile_filter({}) is None and compile_filter(None) is None


def test_the_index_finds_exactly_what_evaluating_every_filter_finds() -> None:
    rng = random.Random(22)
    specs: list[Any] = [None]
    for n in range(300):
        kind = n % 5
        if kind == 0:
            specs.append({"data.customer": f"c{n % 40}"})
        elif kind == 1:
            specs.append({"data": {"customer": {"$in": [f"c{n % 40}", f"c{(n + 1) % 40}"]}}})
        elif kind == 2:
            specs.append({"data.customer": f"c{n % 40}", "data.amount": {"$gte": n % 100}})
        elif kind == 3:
            specs.append({"data.amount": {"$lt": n % 100}})
        else:
            specs.append({"$or": [{"data.customer": f"c{n % 40}"}, {"data.tags": "vip"}]})
    compiled = [compile_filter(spec) for spec in specs]
    targets = FilteredTargets((f, i) for i, f in enumerate(compiled))
    assert targets.indexed and targets.scanned
    for _ in range(300):
        customer = rng.choice([f"c{rng.randrange(45)}", [f"c{rng.randrange(45)}", "c1"], None, 7])
        body = {
            "data": {
                "customer": customer,
                "amount": rng.randrange(120),
                "tags": ["vip"][: rng.randrange(2)],
            }
        }
        expected = [i for i, f in enumerate(compiled) if f is None or f.matches(body)]
        assert targets.select(body) == expected


# --- through the API -------------------------------------------------------------------------


def _hook(api: ApiClient, integration: dict[str, Any], url: str, **extra: Any) -> Any:
    body = {"url": url, "events": ["order.*"], "integration_id": integration["id"], **extra}
    return api.post("/api/v1/webhooks", json=body)


def _publish(api: ApiClient, data: dict[str, Any]) -> int:
    res = api.post("/api/v1/events", json={"type": "order.paid", "data": data})
    assert res.status_code == 202, res.json
    return int(res.json["deliveries"])


def test_a_webhook_filter_decides_at_publish_which_deliveries_exist(
    api: ApiClient, integration: dict[str, Any], receiver: Any
) -> None:
    api.post("/api/v1/event-types", json={"name": "order.paid"})
    big = _hook(api, integration, receiver.url, filter={"data": {"amount": {"$gte": 100}}})
    assert big.status_code == 201 and big.json["filter"] == {"data": {"amount": {"$gte": 100}}}
    french = _hook(api, integration, receiver.url, filter={"data.country": {"$in": ["FR", "BE"]}})
    everything = _hook(api, integration, receiver.url, filter={})
    assert everything.json["filter"] is None
    assert _publish(api, {"amount": 500, "country": "DE"}) == 2  # big + everything
    assert _publish(api, {"amount": 5, "country": "FR"}) == 2  # french + everything
    assert _publish(api, {"amount": 5}) == 1
    deliveries = api.get(f"/api/v1/webhooks/{big.json['id']}/deliveries").json["items"]
    assert len(deliveries) == 1  # nothing was created for events it filtered out
    # A changed filter reaches the next publish (the routes cache follows the database).
    api.patch(f"/api/v1/webhooks/{french.json['id']}", json={"filter": {"data.country": "DE"}})
    assert _publish(api, {"amount": 5, "country": "DE"}) == 2
    api.patch(f"/api/v1/webhooks/{french.json['id']}", json={"filter": None})
    assert _publish(api, {"amount": 5}) == 2


def test_a_bad_webhook_filter_is_a_422_naming_the_place_and_nothing_is_written(
    api: ApiClient, integration: dict[str, Any], receiver: Any
) -> None:
    api.post("/api/v1/event-types", json={"name": "order.paid"})
    bad = _hook(api, integration, receiver.url, filter={"data": {"amount": {"$gte": [1]}}})
    assert bad.status_code == 422 and bad.content_type == "application/problem+json"
    assert bad.json["errors"] == {"filter.data.amount.$gte": ["must be a number or a string"]}
    assert api.get("/api/v1/webhooks").json["total"] == 0
    hook = _hook(api, integration, receiver.url).json
    patched = api.patch(f"/api/v1/webhooks/{hook['id']}", json={"filter": {"$or": {}}})
    assert patched.status_code == 422 and "filter.$or" in patched.json["errors"]
    assert api.get(f"/api/v1/webhooks/{hook['id']}").json["filter"] is None


def test_a_subscription_filter_decides_which_events_run_its_action(
    api: ApiClient, receiver: Any
) -> None:
    api.post("/api/v1/event-types", json={"name": "order.paid"})
    body = {
        "name": "upstream",
        "type": "api",
        "provider": "rest",
        "status": "active",
        "config": {"upstreams": [{"url": receiver.url}]},
        "subscriptions": [
            {
                "events": ["order.paid"],
                "action": "request",
                "input": {"method": "POST", "path": "/"},
                "filter": {"data.amount": {"$gt": 1000}},
            }
        ],
    }
    created = api.post("/api/v1/integrations", json=body)
    assert created.status_code == 201, created.json
    assert created.json["subscriptions"][0]["filter"] == {"data.amount": {"$gt": 1000}}
    assert _publish(api, {"amount": 5}) == 0
    assert _publish(api, {"amount": 5000}) == 1
    bad = api.patch(
        f"/api/v1/integrations/{created.json['id']}",
        json={"subscriptions": [{**body["subscriptions"][0], "filter": {"$xor": []}}]},
    )
    assert bad.status_code == 422 and "subscriptions.0.filter.$xor" in bad.json["errors"]
