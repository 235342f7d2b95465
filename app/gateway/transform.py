"""Request transformation for the gateway, with the semantics of Kong's request-transformer.

An integration's config may carry a ``transform`` object (shape and validation:
``TRANSFORM_SCHEMA``) with five optional operations, each on ``headers`` and/or
``querystring``, always applied in this order:

1. ``remove``  — delete every value of the listed names.
2. ``rename``  — ``{"old": "new"}``: only if ``old`` is present, move all its values to
   ``new`` (replacing any values ``new`` already had); ignored otherwise.
3. ``replace`` — ``{"name": "value"}``: only if ``name`` is present, its values become the
   single ``value``; ignored otherwise.
4. ``add``     — ``{"name": "value"}``: only if ``name`` is absent, set it; ignored otherwise.
5. ``append``  — ``{"name": "value" | ["v1", "v2"]}``: always add the value(s) after any
   existing ones (a repeated header / repeated query parameter).

Within one operation, entries apply in the order the config lists them (so renames chain).
Header names are compared case-insensitively; query parameter names are case-sensitive.
Headers and query strings are ordered lists of ``(name, value)`` pairs so repeated names
survive; a header with several values is returned as several pairs, and the proxy decides how
to put them on the wire (one line each, or joined with ``", "``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["OPERATIONS", "TRANSFORM_SCHEMA", "apply_request_transform"]

Pairs = list[tuple[str, str]]

#: Operations in the order they are applied.
OPERATIONS = ("remove", "rename", "replace", "add", "append")

# RFC 9110 field-name token; values must not smuggle extra header lines (CR/LF) or NUL.
# (?![\s\S]) is the true end of the string: ``$`` would also match before a final newline.
_HEADER_NAME: dict[str, Any] = {
    "type": "string",
    "pattern": r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+(?![\s\S])",
}
_HEADER_VALUE: dict[str, Any] = {"type": "string", "pattern": r"^[^\r\n\x00]*(?![\s\S])"}
_QUERY_NAME: dict[str, Any] = {"type": "string", "minLength": 1}
_QUERY_VALUE: dict[str, Any] = {"type": "string"}


def _names(name: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": name, "uniqueItems": True}


def _mapping(name: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "propertyNames": name, "additionalProperties": value}


def _one_or_many(value: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [value, {"type": "array", "items": value, "minItems": 1}]}


def _operation(description: str, headers: dict[str, Any], query: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": {"headers": headers, "querystring": query},
        "additionalProperties": False,
    }


#: JSON Schema (draft 2020-12) of a transform config.
TRANSFORM_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Request transformation",
    "description": (
        "Kong request-transformer semantics. Operations run in the order remove, rename, "
        "replace, add, append. Header names are case-insensitive, query names case-sensitive."
    ),
    "type": "object",
    "properties": {
        "remove": _operation(
            "Names whose values are all deleted.",
            _names(_HEADER_NAME),
            _names(_QUERY_NAME),
        ),
        "rename": _operation(
            "old name -> new name; only if the old name is present (overwrites the new name).",
            _mapping(_HEADER_NAME, _HEADER_NAME),
            _mapping(_QUERY_NAME, _QUERY_NAME),
        ),
        "replace": _operation(
            "name -> value; only if the name is present (all its values become this one).",
            _mapping(_HEADER_NAME, _HEADER_VALUE),
            _mapping(_QUERY_NAME, _QUERY_VALUE),
        ),
        "add": _operation(
            "name -> value; only if the name is absent.",
            _mapping(_HEADER_NAME, _HEADER_VALUE),
            _mapping(_QUERY_NAME, _QUERY_VALUE),
        ),
        "append": _operation(
            "name -> value or list of values, added after any existing values.",
            _mapping(_HEADER_NAME, _one_or_many(_HEADER_VALUE)),
            _mapping(_QUERY_NAME, _one_or_many(_QUERY_VALUE)),
        ),
    },
    "additionalProperties": False,
}


def _header_key(name: str) -> str:
    return name.lower()


def _query_key(name: str) -> str:
    return name


def _remove(pairs: Pairs, names: Sequence[str], key: Callable[[str], str]) -> Pairs:
    doomed = {key(name) for name in names}
    return [(n, v) for n, v in pairs if key(n) not in doomed]


def _rename(pairs: Pairs, renames: Mapping[str, str], key: Callable[[str], str]) -> Pairs:
    for old, new in renames.items():
        old_key, new_key = key(old), key(new)
        if not any(key(n) == old_key for n, _ in pairs):
            continue
        # Values already under the new name are overwritten, as Kong's set_header does.
        pairs = [
            (new, v) if key(n) == old_key else (n, v)
            for n, v in pairs
            if key(n) == old_key or key(n) != new_key
        ]
    return pairs


def _replace(pairs: Pairs, values: Mapping[str, str], key: Callable[[str], str]) -> Pairs:
    for name, value in values.items():
        wanted = key(name)
        result: Pairs = []
        seen = False
        for n, v in pairs:
            if key(n) != wanted:
                result.append((n, v))
            elif not seen:  # first occurrence keeps its position and spelling
                result.append((n, value))
                seen = True
        pairs = result
    return pairs


def _add(pairs: Pairs, values: Mapping[str, str], key: Callable[[str], str]) -> Pairs:
    for name, value in values.items():
        if not any(key(n) == key(name) for n, _ in pairs):
            pairs = [*pairs, (name, value)]
    return pairs


def _append(pairs: Pairs, values: Mapping[str, str | Sequence[str]]) -> Pairs:
    for name, value in values.items():
        items = [value] if isinstance(value, str) else list(value)
        pairs = [*pairs, *((name, item) for item in items)]
    return pairs


def _transform(
    pairs: Sequence[tuple[str, str]],
    config: Mapping[str, Any],
    part: str,
    key: Callable[[str], str],
) -> Pairs:
    """Apply every operation of ``config`` that targets ``part`` to ``pairs``, in order."""

    def section(operation: str) -> Any:
        return (config.get(operation) or {}).get(part) or {}

    result = list(pairs)
    result = _remove(result, section("remove"), key)
    result = _rename(result, section("rename"), key)
    result = _replace(result, section("replace"), key)
    result = _add(result, section("add"), key)
    return _append(result, section("append"))


def apply_request_transform(
    config: Mapping[str, Any],
    headers: Sequence[tuple[str, str]],
    query: Sequence[tuple[str, str]],
) -> tuple[Pairs, Pairs]:
    """Return ``(headers, query)`` rewritten by ``config``; the inputs are not modified.

    ``config`` is assumed valid against ``TRANSFORM_SCHEMA`` (validated when the integration
    is saved). An empty config returns copies of the inputs.
    """
    return (
        _transform(headers, config, "headers", _header_key),
        _transform(query, config, "querystring", _query_key),
    )
