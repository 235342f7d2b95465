"""JSON Schemas of connector configs and action inputs, and what the core reads from them.

``config_errors`` validates with messages keyed by field path (never quoting the value);
``secret_paths``/``replace_secrets`` find the ``writeOnly`` fields to encrypt at rest and redact;
``url_paths``/``values_at`` find the destinations the SSRF guard checks on save;
``with_defaults`` fills in the ``default`` of absent properties. The short form of a connector
declares fields with ``secret``, ``url``, ``secret_url`` and ``optional``, and ``object_schema``
turns such fields into the schema of an object. Public names are re-exported by
``app.connectors``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jsonschema import Draft202012Validator, ValidationError

#: Path element of ``secret_paths`` standing for every array item or every map value.
ANY = "*"


# --- configuration validation -------------------------------------------------------------


def config_errors(schema: Mapping[str, Any], config: Any) -> dict[str, list[str]]:
    """Validate ``config`` against a JSON Schema (2020-12); map field paths to messages.

    Keys are dotted paths (``upstreams.0.url``) or ``_schema`` for the root. Messages never
    quote the submitted value, so secrets cannot leak into error answers. An empty dict means
    the config is valid. ``format`` is an annotation only; use ``pattern`` to enforce shapes.
    """
    return schema_errors(Draft202012Validator(dict(schema)), config, dotted_path)


def dotted_path(path: Iterable[str | int]) -> str:
    """``upstreams.0.url``: how config and field errors name a place (``_schema``: the root)."""
    return ".".join(str(part) for part in path) or "_schema"


Key = Callable[[list[str | int]], str]


def schema_errors(validator: Draft202012Validator, instance: Any, key: Key) -> dict[str, list[str]]:
    """Validate ``instance``; map each failing place, named by ``key(path)``, to messages
    built from the schema alone (as :func:`config_errors` does)."""
    errors: dict[str, list[str]] = {}
    for error in validator.iter_errors(instance):
        _collect(error, errors, key)
    return errors


def _add(out: dict[str, list[str]], key: str, message: str) -> None:
    messages = out.setdefault(key, [])
    if message not in messages:
        messages.append(message)


def _collect(error: ValidationError, out: dict[str, list[str]], key: Key) -> None:
    path = list(error.absolute_path)
    instance, value = error.instance, error.validator_value
    if error.validator in ("oneOf", "anyOf"):
        closest = _closest_branch(error)
        if closest is None:
            _add(out, key(path), _branches_message(error))
        for sub in closest or ():
            _collect(sub, out, key)
    elif error.validator == "required" and isinstance(instance, dict):
        for name in value:
            if name not in instance:
                _add(out, key([*path, name]), "is required")
    elif error.validator == "dependentRequired" and isinstance(instance, dict):
        for name, needed in value.items():
            for other in needed if name in instance else ():
                if other not in instance:
                    _add(out, key([*path, other]), f"is required when {name} is set")
    elif error.validator == "additionalProperties" and isinstance(instance, dict):
        known = set(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        for name in instance:
            if name not in known and not any(re.search(p, name) for p in patterns):
                _add(out, key([*path, name]), "is not an allowed field")
    else:
        _add(out, key(path), _message(error))


def _closest_branch(error: ValidationError) -> list[ValidationError] | None:
    """The errors of the only oneOf/anyOf branch whose discriminators match, if exactly one."""
    branches: dict[int, list[ValidationError]] = {}
    for sub in error.context or ():
        branches.setdefault(int(sub.relative_schema_path[0]), []).append(sub)
    candidates = [
        errs
        for errs in branches.values()
        if not any(
            e.validator in ("const", "enum", "not")
            or (e.validator == "type" and not e.relative_path)
            for e in errs
        )
    ]
    return candidates[0] if len(candidates) == 1 else None


def _branch_label(index: int, schema: Any) -> str:
    if isinstance(schema, dict):
        if schema.get("title"):
            return str(schema["title"])
        discriminator = schema.get("properties", {}).get("type", {})
        if isinstance(discriminator, dict) and "const" in discriminator:
            return f"type {discriminator['const']}"
        if "type" in schema:
            return _format(schema["type"])
    return f"option {index + 1}"


def _branches_message(error: ValidationError) -> str:
    labels = "; ".join(_branch_label(i, s) for i, s in enumerate(error.validator_value))
    if error.validator == "anyOf":
        return f"must match at least one of: {labels}"
    if not error.context:  # oneOf failed because several branches matched
        return f"must match exactly one of: {labels} (it matches more than one)"
    return f"must match exactly one of: {labels}"


def _format(value: Any) -> str:
    if isinstance(value, list):
        return " or ".join(_format(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


_FORMAT_NAMES = {"uri": "URL", "email": "email address"}
_MESSAGES = {
    "type": "must be of type {v}",
    "enum": "must be one of: {items}",
    "const": "must be {v}",
    "minLength": "must be at least {v} character{s} long",
    "maxLength": "must be at most {v} character{s} long",
    "minItems": "must contain at least {v} item{s}",
    "maxItems": "must contain at most {v} item{s}",
    "minProperties": "must have at least {v} field{s}",
    "maxProperties": "must have at most {v} field{s}",
    "minimum": "must be at least {v}",
    "maximum": "must be at most {v}",
    "exclusiveMinimum": "must be greater than {v}",
    "exclusiveMaximum": "must be less than {v}",
    "multipleOf": "must be a multiple of {v}",
    "pattern": "must match the pattern {v}",
    "format": "must be a valid {v}",
    "uniqueItems": "must not contain duplicate items",
    "not": "is not allowed here",
}


def _message(error: ValidationError) -> str:
    """A human-readable message built from the schema alone (never from the value)."""
    kind, value = error.validator, error.validator_value
    if kind == "minLength" and value == 1:
        return "must not be empty"
    if kind == "pattern" and isinstance(error.schema, dict) and "format" in error.schema:
        kind, value = "format", error.schema["format"]  # "must be a valid URL" reads better
    if kind == "format":
        value = _FORMAT_NAMES.get(value, value)
    if kind in _MESSAGES:
        items = ", ".join(_format(v) for v in value) if kind == "enum" else ""
        return _MESSAGES[kind].format(v=_format(value), items=items, s="" if value == 1 else "s")
    if kind is None or value is False:  # a `false` schema
        return "is not allowed"
    return f"is invalid ({kind})"


# --- secrets (writeOnly fields) -----------------------------------------------------------


def secret_paths(schema: Mapping[str, Any]) -> list[tuple[str | int, ...]]:
    """Return where ``writeOnly`` fields sit in configs of ``schema``.

    Each path is a tuple of object keys and array indexes; ``ANY`` (``"*"``) stands for every
    item of an array (``items``) or every value of a map (``additionalProperties``). Branches of
    ``oneOf``/``anyOf``/``allOf``/``if``-``then``-``else`` and local ``$ref``s are followed.
    """
    return _marked_paths(schema, lambda node: node.get("writeOnly") is True)


def url_paths(schema: Mapping[str, Any]) -> list[tuple[str | int, ...]]:
    """Return where ``"format": "uri"`` fields sit: destinations checked by the SSRF guard on save.

    Paths are those of ``secret_paths``; a secret URL (Slack's ``webhook_url``) is one too. A
    URL the service never calls (a browser redirect back to us) opts out with
    ``"x-destination": false``.
    """
    return _marked_paths(
        schema, lambda node: node.get("format") == "uri" and node.get("x-destination") is not False
    )


Path = tuple[str | int, ...]


def _marked_paths(schema: Mapping[str, Any], mark: Callable[[dict[str, Any]], bool]) -> list[Path]:
    found: list[Path] = []
    _walk_marked(dict(schema), (), dict(schema), found, frozenset(), mark)
    return found


def _walk_marked(
    schema: Any,
    path: Path,
    root: dict[str, Any],
    found: list[Path],
    refs: frozenset[str],
    mark: Callable[[dict[str, Any]], bool],
) -> None:
    if not isinstance(schema, dict):
        return
    if mark(schema):
        if path not in found:
            found.append(path)
        return
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#") and ref not in refs:
        target: Any = root
        for part in ref.lstrip("#").split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, dict) else None
        _walk_marked(target, path, root, found, refs | {ref}, mark)
    for key, sub in (schema.get("properties") or {}).items():
        _walk_marked(sub, (*path, key), root, found, refs, mark)
    for sub in (schema.get("patternProperties") or {}).values():
        _walk_marked(sub, (*path, ANY), root, found, refs, mark)
    _walk_marked(schema.get("additionalProperties"), (*path, ANY), root, found, refs, mark)
    _walk_marked(schema.get("items"), (*path, ANY), root, found, refs, mark)
    for index, sub in enumerate(schema.get("prefixItems") or ()):
        _walk_marked(sub, (*path, index), root, found, refs, mark)
    for keyword in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(keyword) or ():
            _walk_marked(sub, path, root, found, refs, mark)
    for keyword in ("then", "else"):
        _walk_marked(schema.get(keyword), path, root, found, refs, mark)
    for sub in (schema.get("dependentSchemas") or {}).values():
        _walk_marked(sub, path, root, found, refs, mark)


def replace_secrets(schema: Mapping[str, Any], config: Any, replace: Callable[[Any], Any]) -> Any:
    """Return a deep copy of ``config`` with every non-null secret value ``v`` as ``replace(v)``.

    Use it to encrypt before storing, decrypt after loading, or redact (``lambda _: "****"``).
    """
    result = copy.deepcopy(config)
    for path in secret_paths(schema):
        if not path:
            return replace(result) if result is not None else None
        _replace_at(result, path, replace)
    return result


def values_at(config: Any, path: Path, prefix: str = "") -> list[tuple[str, Any]]:
    """The non-null values at ``path`` in ``config`` (``ANY`` expanded), with dotted paths."""
    if not path:
        return [] if config is None else [(prefix.rstrip("."), config)]
    head, rest = path[0], path[1:]
    if isinstance(config, dict):
        keys: list[Any] = list(config) if head == ANY else [head] if head in config else []
    elif isinstance(config, list):
        indexes = range(len(config))
        keys = list(indexes) if head == ANY else [head] if head in indexes else []
    else:
        return []
    return [found for key in keys for found in values_at(config[key], rest, f"{prefix}{key}.")]


def _replace_at(node: Any, path: tuple[str | int, ...], replace: Callable[[Any], Any]) -> None:
    head, rest = path[0], path[1:]
    keys: Iterable[Any]
    if isinstance(node, dict):
        keys = list(node) if head == ANY else [head] if head in node else []
    elif isinstance(node, list):
        if head == ANY:
            keys = range(len(node))
        else:
            keys = [head] if isinstance(head, int) and 0 <= head < len(node) else []
    else:
        return
    for key in keys:
        if rest:
            _replace_at(node[key], rest, replace)
        elif node[key] is not None:
            node[key] = replace(node[key])


# --- defaults ---------------------------------------------------------------------------


def with_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """Return a copy of ``value`` with the ``default`` of every absent property filled in.

    Properties of nested objects and of array items are filled in too; branches of
    ``oneOf``/``anyOf``/``allOf`` and ``$ref``s are not followed (which branch applies is the
    value's to say). ``value`` itself is left untouched.
    """
    return _fill_defaults(schema, copy.deepcopy(value))


def _fill_defaults(schema: Any, value: Any) -> Any:
    if not isinstance(schema, Mapping):
        return value
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in value:
                value[name] = _fill_defaults(sub, value[name])
            elif isinstance(sub, Mapping) and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        value = [_fill_defaults(schema["items"], item) for item in value]
    return value


# --- fields of the short form -----------------------------------------------------------

#: An http(s) URL with a host, no ``user:password@`` (credentials belong in their own field)
#: and no whitespace; the pattern ``url`` and ``secret_url`` fields are checked against.
URL_PATTERN = r"^https?://[^\s/?#@]+([/?#]\S*)?$"
#: Marks a field that ``object_schema`` leaves out of ``required``; removed from the schema.
_OPTIONAL = "x-optional"


def secret(description: str = "", **keywords: Any) -> dict[str, Any]:
    """A non-empty secret string: ``writeOnly``, so encrypted at rest and redacted in answers.

    ``keywords`` are added to the schema (``title=``, ``pattern=``, ``default=`` …).
    """
    return _field({"type": "string", "minLength": 1, "writeOnly": True}, description, keywords)


def url(description: str = "", **keywords: Any) -> dict[str, Any]:
    """An http(s) URL the connector calls: ``format: uri``, checked by the SSRF guard on save."""
    schema = {"type": "string", "format": "uri", "pattern": URL_PATTERN}
    return _field(schema, description, keywords)


def secret_url(description: str = "", **keywords: Any) -> dict[str, Any]:
    """A URL that is itself a credential (an incoming-webhook URL): a ``url`` and a ``secret``."""
    return {**url(description, **keywords), "writeOnly": True}


def optional(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The field ``schema`` marked as not required by ``object_schema``."""
    return {**schema, _OPTIONAL: True}


def object_schema(fields: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON Schema of an object with ``fields`` (name -> schema) and no other field.

    A field is required unless its schema has a ``default`` or is marked ``optional``.
    """
    properties = {
        name: {key: value for key, value in schema.items() if key != _OPTIONAL}
        for name, schema in fields.items()
    }
    required = [
        name
        for name, schema in fields.items()
        if "default" not in schema and not schema.get(_OPTIONAL)
    ]
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _field(schema: dict[str, Any], description: str, keywords: dict[str, Any]) -> dict[str, Any]:
    return {**schema, **({"description": description} if description else {}), **keywords}
