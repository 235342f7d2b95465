"""Payload filters: which events of a subscribed type a webhook or a subscription receives.

The shape is Hookdeck Outpost's destination filter: a JSON object that mirrors the delivered
body (``{"type": …, "data": {…}}``), where a plain value must be equal, an object of
``$``-operators compares, and ``$and``/``$or``/``$not`` combine::

    {"data": {"status": "paid", "amount": {"$gte": 100}, "customer": {"tier": "gold"}}}
    {"$or": [{"data.country": "FR"}, {"data.total": {"$gt": 1000}}]}

A key may also be a dotted path (``"data.customer.tier"``), the same paths as a webhook's
``ordering_key`` and the erasure's ``match``; a digit segment indexes an array (a key with a
dot in it cannot be named). Operators: ``$eq $neq $in $nin $gt $gte $lt $lte $exists``;
``$not`` on a field (``{"status": {"$not": {"$in": [...]}}}``) or around a whole filter;
``$and``/``$or`` at the top or under a field (``{"customer": {"$or": [...]}}``).
Semantics (MongoDB's, as Outpost's): a field holding an array matches when an element does
(``{"tags": "urgent"}`` matches ``["urgent", "vip"]``); a missing field matches only
``$neq``, ``$nin`` and ``{"$exists": false}``; numbers compare with numbers (``1`` equals
``1.0``, never ``true``) and strings with strings (so RFC 3339 times order correctly);
anything else does not match. Outpost's ``$startsWith``/``$endsWith`` and its substring
``$in`` are not offered; its ``$exist`` is spelled ``$exists`` here.

:func:`compile_filter` checks a filter against documented bounds (``MAX_…``) and raises
:class:`FilterInvalid` naming the place (``filter.data.amount.$gte``). A compiled filter may
carry an *index term*: an equality (or ``$in``) on one path at its top level.
:class:`FilteredTargets` files targets under those terms, so a publish looks up the handful
whose term equals the event's value instead of evaluating every filter: publishing costs the
same with one filtered webhook as with a thousand (``bench/filters.py``). Filters without an
index term are evaluated one by one, each a few closure calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from app.store import jsoncodec

MAX_FILTER_BYTES = 8 * 1024
MAX_DEPTH = 8  # nested objects, operator objects and logical lists, from the filter's root
MAX_CONDITIONS = 50  # comparisons in one filter
MAX_IN_VALUES = 100  # values of one $in / $nin
MAX_PATH_SEGMENTS = 10
MAX_SEGMENT_LENGTH = 200
MAX_STRING_LENGTH = 1000

COMPARISONS = ("$eq", "$neq", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists")
LOGICAL = ("$and", "$or", "$not")

Path = tuple[str, ...]
Predicate = Callable[[Any], bool]
#: A JSON scalar's identity for equality: numbers by value (1 == 1.0), booleans apart from them.
ValueKey = tuple[str, Any]
MISSING: Any = object()


class FilterInvalid(ValueError):
    """A filter outside the grammar or its bounds; ``errors`` maps each place to messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items()))
        self.errors = errors


#: What :func:`parse_path` accepts (NUL aside, refused everywhere), as the spec publishes it.
DOTTED_PATH = (
    f"^[^.\\u0000]{{1,{MAX_SEGMENT_LENGTH}}}"
    f"(?:\\.[^.\\u0000]{{1,{MAX_SEGMENT_LENGTH}}}){{0,{MAX_PATH_SEGMENTS - 1}}}$"
)


def parse_path(text: str) -> Path:
    """A dotted path (``data.customer.tier``) as its segments; ValueError when malformed."""
    segments = tuple(text.split("."))
    if not text or any(not part for part in segments):
        raise ValueError("must be a dotted path such as data.order_id (no empty segment)")
    if len(segments) > MAX_PATH_SEGMENTS:
        raise ValueError(f"must have at most {MAX_PATH_SEGMENTS} segments")
    if any(len(part) > MAX_SEGMENT_LENGTH for part in segments):
        raise ValueError(f"segments must be at most {MAX_SEGMENT_LENGTH} characters")
    return segments


def resolve(document: Any, path: Path) -> Any:
    """The value at ``path`` in ``document``, or ``MISSING``."""
    value = document
    for part in path:
        if isinstance(value, dict):
            value = value.get(part, MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
        if value is MISSING:
            return MISSING
    return value


def value_key(value: Any) -> ValueKey | None:
    """How a JSON scalar is compared for equality; None for objects and arrays."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)  # 1 and 1.0 hash and compare alike
    if isinstance(value, str):
        return ("string", value)
    if value is None:
        return ("null", None)
    return None


def value_keys(value: Any) -> list[ValueKey]:
    """The keys a field's value is matched by: its own, or each element's for an array."""
    if isinstance(value, list):
        return [key for item in value if (key := value_key(item)) is not None]
    key = value_key(value)
    return [] if key is None else [key]


@dataclass(frozen=True)
class Filter:
    """A compiled filter: ``matches(body)``, and its index term (path, keys) if it has one."""

    matches: Predicate
    index: tuple[Path, frozenset[ValueKey]] | None


def compile_filter(spec: Any, name: str = "filter") -> Filter | None:
    """Check ``spec`` and compile it; None for no filter (null or ``{}``). Raises
    :class:`FilterInvalid` with places named from ``name`` (``filter.data.amount.$gte``)."""
    if spec is None or spec == {}:
        return None
    if not isinstance(spec, dict):
        raise FilterInvalid({name: ["must be an object (see the filter grammar)"]})
    if len(jsoncodec.dumps(spec)) > MAX_FILTER_BYTES:
        raise FilterInvalid({name: [f"must be at most {MAX_FILTER_BYTES // 1024} KiB of JSON"]})
    compiler = _Compiler()
    terms = compiler.filter(spec, (), [name], 1)
    if compiler.errors:
        raise FilterInvalid(compiler.errors)
    if compiler.conditions > MAX_CONDITIONS:
        raise FilterInvalid({name: [f"must hold at most {MAX_CONDITIONS} conditions"]})
    predicates = [predicate for predicate, _ in terms]
    index = next((term for _, term in terms if term is not None), None)
    return Filter(_all(predicates), index)


# A compiled term: its predicate, and the index term it offers (an equality on one path).
_Term = tuple[Predicate, tuple[Path, frozenset[ValueKey]] | None]


class _Compiler:
    """One filter's compilation: terms out, errors and the condition count collected."""

    def __init__(self) -> None:
        self.errors: dict[str, list[str]] = {}
        self.conditions = 0

    def fail(self, where: list[str], message: str) -> None:
        self.errors.setdefault(".".join(where), []).append(message)

    def filter(self, spec: Any, prefix: Path, where: list[str], depth: int) -> list[_Term]:
        """The terms of a filter object (their conjunction) whose paths start at ``prefix``."""
        if depth > MAX_DEPTH:
            self.fail(where, f"nests deeper than {MAX_DEPTH} levels")
            return []
        if not isinstance(spec, dict) or not spec:
            self.fail(where, "must be a non-empty object")
            return []
        terms: list[_Term] = []
        for key, value in spec.items():
            at = [*where, key]
            if key in ("$and", "$or"):
                terms.append(self.logical(key, value, prefix, at, depth))
            elif key == "$not":
                inner = self.filter(value, prefix, at, depth + 1)
                terms.append((_negate(_all([p for p, _ in inner])), None))
            elif key.startswith("$"):
                self.fail(at, f"unknown operator here (allowed: {', '.join(LOGICAL)})")
            else:
                try:
                    path = prefix + parse_path(key)
                except ValueError as exc:
                    self.fail(at, str(exc))
                    continue
                if len(path) > MAX_PATH_SEGMENTS:
                    self.fail(at, f"the path is longer than {MAX_PATH_SEGMENTS} segments")
                    continue
                terms += self.field(value, path, at, depth + 1)
        return terms

    def logical(self, key: str, value: Any, prefix: Path, where: list[str], depth: int) -> _Term:
        if not isinstance(value, list) or not value:
            self.fail(where, "must be a non-empty list of filters")
            return (_never, None)
        branches = [
            _all([p for p, _ in self.filter(item, prefix, [*where, str(i)], depth + 1)])
            for i, item in enumerate(value)
        ]
        if key == "$or":
            return (lambda body: any(branch(body) for branch in branches), None)
        return (_all(branches), None)

    def field(self, value: Any, path: Path, where: list[str], depth: int) -> list[_Term]:
        """The terms a field's value asks for: equality, operators, or a nested filter."""
        if isinstance(value, dict):
            operators = [key for key in value if key.startswith("$")]
            if set(operators) <= {"$and", "$or"}:  # a filter of its own, under this path
                return self.filter(value, path, where, depth)
            if len(operators) != len(value):
                self.fail(where, "mixes operators with field names")
                return []
            return [
                self.operator(op, operand, path, [*where, op], depth)
                for op, operand in value.items()
            ]
        if isinstance(value, list):
            self.fail(where, "a list is not a value to match: use $in")
            return []
        return [self.operator("$eq", value, path, where, depth)]

    def operator(self, op: str, operand: Any, path: Path, where: list[str], depth: int) -> _Term:
        self.conditions += 1
        if op == "$not":
            if depth + 1 > MAX_DEPTH:
                self.fail(where, f"nests deeper than {MAX_DEPTH} levels")
                return (_never, None)
            inner = self.field(operand, path, where, depth + 1)
            return (_negate(_all([p for p, _ in inner])), None)
        if op not in COMPARISONS:
            self.fail(where, f"unknown operator (allowed: {', '.join(COMPARISONS + ('$not',))})")
            return (_never, None)
        if op == "$exists":
            if not isinstance(operand, bool):
                self.fail(where, "must be true or false")
                return (_never, None)
            return (_exists(path, operand), None)
        if op in ("$in", "$nin"):
            keys = self.scalars(operand, where)
            if op == "$in":
                return (_member(path, keys), (path, keys))
            return (_negate(_member(path, keys)), None)
        if op in ("$eq", "$neq"):
            keys = self.scalars([operand], where, single=True)
            if op == "$eq":
                return (_member(path, keys), (path, keys))
            return (_negate(_member(path, keys)), None)
        return (self.ordering(op, operand, path, where), None)

    def scalars(self, operand: Any, where: list[str], single: bool = False) -> frozenset[ValueKey]:
        if not single and (not isinstance(operand, list) or not operand):
            self.fail(where, "must be a non-empty list of values")
            return frozenset()
        if len(operand) > MAX_IN_VALUES:
            self.fail(where, f"must hold at most {MAX_IN_VALUES} values")
            return frozenset()
        keys = set()
        for item in operand:
            key = value_key(item)
            if key is None:
                self.fail(where, "values must be strings, numbers, booleans or null")
                return frozenset()
            if isinstance(item, str) and len(item) > MAX_STRING_LENGTH:
                self.fail(where, f"strings must be at most {MAX_STRING_LENGTH} characters")
            keys.add(key)
        return frozenset(keys)

    def ordering(self, op: str, operand: Any, path: Path, where: list[str]) -> Predicate:
        key = value_key(operand)
        if key is None or key[0] not in ("number", "string"):
            self.fail(where, "must be a number or a string")
            return _never
        if isinstance(operand, str) and len(operand) > MAX_STRING_LENGTH:
            self.fail(where, f"strings must be at most {MAX_STRING_LENGTH} characters")
        compare = _COMPARE[op]
        kind = key[0]

        def predicate(body: Any) -> bool:
            value = resolve(body, path)
            items = value if isinstance(value, list) else (value,)
            return any(
                (found := value_key(item)) is not None
                and found[0] == kind
                and compare(item, operand)
                for item in items
            )

        return predicate


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def _never(body: Any) -> bool:
    return False


def _all(predicates: list[Predicate]) -> Predicate:
    if len(predicates) == 1:
        return predicates[0]
    return lambda body: all(predicate(body) for predicate in predicates)


def _negate(predicate: Predicate) -> Predicate:
    return lambda body: not predicate(body)


def _exists(path: Path, wanted: bool) -> Predicate:
    return lambda body: (resolve(body, path) is not MISSING) is wanted


def _member(path: Path, keys: frozenset[ValueKey]) -> Predicate:
    return lambda body: any(key in keys for key in value_keys(resolve(body, path)))


T = TypeVar("T")


class FilteredTargets(Generic[T]):
    """Targets of one event type, some behind filters, found for a body in their given order.

    Targets whose filter has an index term are filed under its path and values: a body is
    matched against only those whose term holds (then against their whole filter). The rest
    are evaluated one by one. Without any filter, ``select`` is a list copy.
    """

    def __init__(self, targets: Iterable[tuple[Filter | None, T]]) -> None:
        self.everyone: list[tuple[int, T]] = []
        self.indexed: dict[Path, dict[ValueKey, list[tuple[int, Filter, T]]]] = {}
        self.scanned: list[tuple[int, Filter, T]] = []
        for position, (compiled, target) in enumerate(targets):
            if compiled is None:
                self.everyone.append((position, target))
            elif compiled.index is None:
                self.scanned.append((position, compiled, target))
            else:
                path, keys = compiled.index
                buckets = self.indexed.setdefault(path, {})
                for key in keys:
                    buckets.setdefault(key, []).append((position, compiled, target))
        self.plain = [target for _, target in self.everyone]
        self.filtered = bool(self.indexed or self.scanned)

    def select(self, body: Any) -> list[T]:
        """The targets whose filter ``body`` passes (all unfiltered ones), in their order."""
        if not self.filtered:
            return list(self.plain)
        found: dict[int, T] = dict(self.everyone)
        for path, buckets in self.indexed.items():
            for key in value_keys(resolve(body, path)):
                for position, compiled, target in buckets.get(key, ()):
                    if position not in found and compiled.matches(body):
                        found[position] = target
        for position, compiled, target in self.scanned:
            if compiled.matches(body):
                found[position] = target
        return [found[position] for position in sorted(found)]
