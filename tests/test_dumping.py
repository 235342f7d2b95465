"""The accelerated field loop (app.web.dumping) gives exactly marshmallow's output."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import marshmallow as ma
import pytest

from app.web.api import UTCDateTime
from app.web.dumping import accelerate


class Child(ma.Schema):
    name = ma.fields.String()
    n = ma.fields.Integer()

    @ma.post_dump
    def _shout(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data["name"] = (data.get("name") or "").upper()
        return data


class Parent(ma.Schema):
    id = ma.fields.String()
    count = ma.fields.Integer()
    size = ma.fields.Integer(as_string=True)
    ratio = ma.fields.Float()
    ok = ma.fields.Boolean()
    config = ma.fields.Dict()
    tags = ma.fields.List(ma.fields.String())
    child = ma.fields.Nested(Child, allow_none=True)
    children = ma.fields.List(ma.fields.Nested(Child))
    created = UTCDateTime()
    owner = ma.fields.String(attribute="owner_id", data_key="created_by")
    fallback = ma.fields.String(dump_default="none given")
    nested_attr = ma.fields.String(attribute="child.name")
    computed = ma.fields.Method("_computed")

    def _computed(self, obj: Any) -> str:
        return f"computed:{ma.utils.get_value(obj, 'id')}"

    @ma.pre_dump
    def _touch(self, obj: Any, **kwargs: Any) -> Any:
        return obj

    @ma.post_dump
    def _drop_none(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {k: v for k, v in data.items() if v is not None}


class Obj:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


FULL = {
    "id": "p1",
    "count": 3,
    "size": 4,
    "ratio": 0.5,
    "ok": True,
    "config": {"a": [1, 2]},
    "tags": ["x", "y"],
    "child": {"name": "kid", "n": 1},
    "children": [{"name": "a", "n": 1}, {"name": "b", "n": 2}],
    "created": datetime(2026, 1, 2, 3, 4, 5),
    "owner_id": "usr_1",
}
ODD = {
    "id": 7,  # not a str: String turns it into "7"
    "count": 2.0,  # not an int
    "size": 5,
    "ratio": 1,  # not a float
    "ok": 1,  # not a bool
    "config": None,
    "tags": None,
    "child": None,
    "children": [],
    "created": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    "owner_id": None,
    "fallback": "given",
}
SPARSE = {"id": "p2"}  # every other key missing


@pytest.mark.parametrize("values", [FULL, ODD, SPARSE], ids=["full", "odd-types", "sparse"])
@pytest.mark.parametrize("as_object", [False, True], ids=["dict", "object"])
def test_same_output_as_marshmallow(values: dict[str, Any], as_object: bool) -> None:
    if as_object and values is SPARSE:
        pytest.skip("an object has every attribute marshmallow would read")
    obj: Any = values
    if as_object:
        child = values["child"]
        obj = Obj(
            **{**values, "child": Obj(**child) if child else None},
        )
    expected = Parent().dump(obj)
    assert accelerate(Parent()).dump(obj) == expected
    many = [obj, obj]
    assert accelerate(Parent(many=True)).dump(many) == Parent(many=True).dump(many)


def test_accelerating_twice_is_a_no_op() -> None:
    schema = accelerate(Parent())
    loop = schema._serialize
    assert accelerate(schema) is schema and schema._serialize is loop
