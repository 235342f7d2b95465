"""Strict JSON (RFC 8259) for everything Switchboard reads or writes.

Python's ``json`` accepts and writes ``NaN`` and ``Infinity``, which no strict parser reads, and
lets a lone UTF-16 surrogate (``"\\ud800"``) through into strings that cannot be encoded as
UTF-8 (so they fail later, in a database driver or a response). Here both are refused on the way
in, and ``dumps`` refuses non-finite numbers on the way out, so every JSON document the service
stores or emits parses with any conforming parser.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: A ``\\u`` escape of a UTF-16 surrogate: only then can a parsed string hold a lone one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


#: Python's own limit on converting digit strings (``sys.get_int_max_str_digits``).
MAX_INT_DIGITS = 4300


class StrictJSONError(ValueError):
    """The text is JSON to Python, but not to RFC 8259 (or not UTF-8-encodable)."""


def _refuse_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise StrictJSONError(f"integers are limited to {MAX_INT_DIGITS} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError(f"number {text[:40]} is out of range")
    return value


def _encodable(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_encodable(k) and _encodable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_encodable(v) for v in value)
    return True


def loads(text: str | bytes) -> Any:
    """Parse strict JSON; raise ``ValueError`` (``StrictJSONError`` or ``JSONDecodeError``).

    Refused: invalid JSON or UTF-8, ``NaN``/``Infinity``, numbers that overflow a float,
    integers over 4,300 digits, lone surrogates.
    """
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8")  # UnicodeDecodeError is a ValueError
    value = json.loads(
        text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int
    )
    if _SURROGATE_ESCAPE.search(text) and not _encodable(value):
        raise StrictJSONError("strings must not contain unpaired UTF-16 surrogates")
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that raises ``ValueError`` instead of writing ``NaN`` or ``Infinity``."""
    return json.dumps(value, allow_nan=False, **kwargs)


#: How deeply ``problem`` follows nested lists and objects (a cycle never ends otherwise).
MAX_DEPTH = 100


def problem(value: Any, path: str = "value") -> str | None:
    """Why ``value`` cannot be written as strict JSON, or None when it can.

    The answer names where (``result.items[2]``) and what (``a set``, ``NaN``) but never the
    content, which may be secret. Tuples pass: they are written as arrays. Refused: any type
    but dict (with str keys), list, tuple, str, int, float, bool and None; ``NaN`` and
    infinities; integers over 4,300 digits; lone surrogates; nesting over ``MAX_DEPTH``.
    """
    return _problem(value, path, 0)


def _problem(value: Any, path: str, depth: int) -> str | None:
    if depth > MAX_DEPTH:  # the path is cut short: a cycle would repeat one key 100 times
        return f"{path[:60]}… is nested more than {MAX_DEPTH} levels deep"
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return None if _encodable(value) else f"{path} is a string with an unpaired surrogate"
    if isinstance(value, int):
        try:
            digits = len(str(abs(value)))
        except ValueError:  # over Python's own limit on converting digits
            digits = MAX_INT_DIGITS + 1
        return None if digits <= MAX_INT_DIGITS else f"{path} is an integer over 4300 digits"
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return f"{path} is {'NaN' if math.isnan(value) else 'infinite'}, not a JSON number"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} has a key of type {type(key).__name__} (JSON keys are strings)"
            found = _problem(item, _member(path, key), depth + 1)
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _problem(item, f"{path}[{index}]", depth + 1)
            if found:
                return found
        return None
    return f"{path} is of type {type(value).__name__}, not a JSON value"


def _member(path: str, key: str) -> str:
    """``path.key``, or ``path['odd key']`` (shortened) when the key is not an identifier."""
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{key[:40]!r}]"
