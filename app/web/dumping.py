"""Fast response serialisation: each response schema's field loop specialised once.

marshmallow's generic loop spends a few microseconds per field on every dump (accessor lookup,
``missing`` checks, ``_serialize`` dispatch); a page of 20 integrations is 260 fields, about
half the cost of the whole list request. :func:`accelerate` replaces that loop on one schema
*instance* (the one a ``@blp.response`` decorator holds) with a precomputed list of steps:

- a value already of the field's JSON type (``str`` for String, ``int`` for Integer, …) is copied
  as is — exactly what the field would return;
- a plain ``Dict`` is shallow-copied, a ``Nested``/``List(Nested)`` goes through the nested
  schema, itself accelerated;
- anything else (datetimes, ``Method`` fields, a value of an unexpected type, a missing value
  with a ``dump_default``) goes through the field's own ``serialize``.

The schemas stay the one source of truth: the OpenAPI spec, names, ``data_key``/``attribute``,
``pre_dump``/``post_dump`` hooks (``Schema.dump`` still runs them; only ``_serialize`` is
replaced) and the output are unchanged: ``tests/test_dumping.py`` compares both paths field
kind by field kind (plain, odd-typed and missing values, nested, hooks), and the API tests read
every response through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import marshmallow as ma
from marshmallow.utils import get_value

__all__ = ["accelerate"]

_MISSING = ma.missing
# Field classes (exactly these, not subclasses) and the Python type their output already has.
_PLAIN: dict[type[ma.fields.Field], type] = {
    ma.fields.String: str,
    ma.fields.Integer: int,
    ma.fields.Boolean: bool,
    ma.fields.Float: float,
}

Step = Callable[[Any, dict[str, Any]], None]


def accelerate(schema: ma.Schema) -> ma.Schema:
    """Give ``schema`` (an instance) the specialised field loop; return it."""
    if getattr(schema, "_accelerated", False):
        return schema
    steps = [_step(schema, name, field) for name, field in schema.dump_fields.items()]

    def serialize_one(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for step in steps:
            step(obj, out)
        return out

    def serialize(obj: Any, *, many: bool = False) -> Any:
        if many and obj is not None:
            return [serialize_one(item) for item in obj]
        return serialize_one(obj)

    schema._serialize = serialize  # type: ignore[method-assign]
    schema._accelerated = True  # type: ignore[attr-defined]
    return schema


def _step(schema: ma.Schema, name: str, field: ma.fields.Field) -> Step:
    key = field.data_key if field.data_key is not None else name
    attribute = field.attribute if field.attribute is not None else name
    convert = _converter(field)

    def generic(obj: Any, out: dict[str, Any]) -> None:
        value = field.serialize(name, obj, accessor=schema.get_attribute)
        if value is not _MISSING:
            out[key] = value

    if (
        convert is None
        or not field._CHECK_ATTRIBUTE
        or field.dump_default is not _MISSING
        or "." in attribute
        or type(schema).get_attribute is not ma.Schema.get_attribute
    ):
        return generic

    def fast(obj: Any, out: dict[str, Any]) -> None:
        # marshmallow's accessor order: a key of a mapping (or anything with __getitem__)
        # first, then an attribute.
        if type(obj) is dict and attribute in obj:
            value = obj[attribute]
        elif hasattr(obj, "__getitem__"):  # the instance's, not a metaclass's (peewee models)
            value = get_value(obj, attribute)
        else:
            value = getattr(obj, attribute, _MISSING)
        if value is not _MISSING:
            out[key] = convert(value, name, obj)

    return fast


def _converter(field: ma.fields.Field) -> Callable[[Any, str, Any], Any] | None:
    """A fast ``_serialize`` for ``field``, or None when only the field's own will do."""
    kind = type(field)
    plain = _PLAIN.get(kind)
    if plain is not None and not getattr(field, "as_string", False):
        slow = field._serialize

        def plain_value(value: Any, attr: str, obj: Any) -> Any:
            if value is None or type(value) is plain:
                return value
            return slow(value, attr, obj)

        return plain_value
    if type(field) is ma.fields.Dict and field.key_field is None and field.value_field is None:
        return lambda value, attr, obj: None if value is None else dict(value)
    if type(field) is ma.fields.Nested:
        nested = accelerate(field.schema)
        many = nested.many or field.many
        return lambda value, attr, obj: None if value is None else nested.dump(value, many=many)
    if type(field) is ma.fields.List and type(field.inner) is ma.fields.Nested:
        inner = accelerate(field.inner.schema)
        inner_many = inner.many or field.inner.many

        def nested_list(value: Any, attr: str, obj: Any) -> Any:
            if value is None:
                return None
            return [None if item is None else inner.dump(item, many=inner_many) for item in value]

        return nested_list
    return lambda value, attr, obj: field._serialize(value, attr, obj)
