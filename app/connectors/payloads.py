"""Typed event payloads: checking an event type's JSON Schema and examples, and validating data.

An event type (built-in, a connector's, or a tenant's own) may carry a JSON Schema (2020-12)
of its payload, the event's ``data``, and examples of it. A schema is checked when it is
declared or saved (:func:`payload_schema_errors`): it must be a valid 2020-12 schema, within
``MAX_SCHEMA_BYTES``, and every reference in it must be local (``#…``): a schema never makes
Switchboard fetch anything, and the compiled validator refuses any other reference as well.
Examples must be valid against the schema.

:func:`payload_validator` compiles a schema once (callers cache it); :func:`payload_errors`
names each failure by its JSON Pointer (RFC 6901) in the published body (``/data/amount``),
with the messages of ``config_errors`` (built from the schema, never quoting the value).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from referencing import Registry
from referencing.exceptions import NoSuchResource

from app.connectors.jsonschemas import dotted_path, schema_errors
from app.store import jsoncodec

MAX_SCHEMA_BYTES = 64 * 1024
MAX_EXAMPLES = 10
MAX_EXAMPLES_BYTES = 64 * 1024
#: At most this many failures are listed for one published payload.
MAX_LISTED_ERRORS = 50
DIALECT = "https://json-schema.org/draft/2020-12/schema"
_REFERENCES = ("$ref", "$dynamicRef")


def _refuse(uri: str) -> Any:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # attrs field, as documented


#: References never resolve outside the schema itself (jsonschema would otherwise fetch them).
_LOCAL_ONLY: Registry[Any] = Registry(retrieve=_refuse)  # type: ignore[call-arg]  # as documented


def _references(node: Any, path: list[str | int]) -> Iterator[tuple[list[str | int], str]]:
    """Every ``$ref``/``$dynamicRef`` in a schema, with where it sits."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _REFERENCES and isinstance(value, str):
                yield [*path, key], value
            else:
                yield from _references(value, [*path, key])
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _references(value, [*path, index])


def payload_schema_errors(schema: Any, examples: list[Any] | None) -> dict[str, list[str]]:
    """What is wrong with an event type's ``schema`` and ``examples``, keyed by field path
    (``schema.properties.amount.type``, ``examples.0.amount``); empty when both are fine."""
    errors: dict[str, list[str]] = {}
    if schema is not None:
        if not isinstance(schema, dict | bool):
            return {"schema": ["must be a JSON Schema (an object)"]}
        if len(jsoncodec.dumps(schema)) > MAX_SCHEMA_BYTES:
            return {"schema": [f"must be at most {MAX_SCHEMA_BYTES // 1024} KiB of JSON"]}
        if isinstance(schema, dict) and schema.get("$schema", DIALECT) != DIALECT:
            errors["schema.$schema"] = [f"only JSON Schema 2020-12 ({DIALECT}) is supported"]
        for path, reference in _references(schema, []):
            if not reference.startswith("#"):
                errors[dotted_path(["schema", *path])] = [
                    "only local references (#…) are allowed: a schema is never fetched"
                ]
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            where = dotted_path(["schema", *exc.absolute_path])
            errors.setdefault(where, []).append(f"is not a valid JSON Schema: {exc.message}")
    if errors or not examples:
        return errors
    if len(examples) > MAX_EXAMPLES:
        return {"examples": [f"must hold at most {MAX_EXAMPLES} examples"]}
    if len(jsoncodec.dumps(examples)) > MAX_EXAMPLES_BYTES:
        return {"examples": [f"must be at most {MAX_EXAMPLES_BYTES // 1024} KiB of JSON"]}
    for index, example in enumerate(examples):
        if not isinstance(example, dict):
            errors[f"examples.{index}"] = ["must be an object (an event's data)"]
        elif schema is not None:
            errors.update(schema_errors(payload_validator(schema), example, _in_example(index)))
    return errors


def _in_example(index: int) -> Callable[[list[str | int]], str]:
    return lambda path: dotted_path(["examples", index, *path])


def payload_validator(schema: Any) -> Draft202012Validator:
    """The compiled validator of a checked schema (references resolve locally only)."""
    return Draft202012Validator(schema, registry=_LOCAL_ONLY)


def json_pointer(path: list[str | int]) -> str:
    """RFC 6901 pointer to ``path`` inside the published body, whose ``data`` is validated."""
    parts = ["data", *(str(part) for part in path)]
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def payload_errors(validator: Draft202012Validator, data: Any) -> dict[str, list[str]]:
    """Each failure of ``data`` against the schema, keyed by JSON Pointer (``/data/amount``),
    at most ``MAX_LISTED_ERRORS`` places; empty when it is valid."""
    errors = schema_errors(validator, data, json_pointer)
    return dict(list(errors.items())[:MAX_LISTED_ERRORS])
