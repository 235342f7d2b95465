"""Keyset (cursor) pagination for the history lists: logs, audit log, deliveries, events.

A page is ``ORDER BY <keys> DESC LIMIT limit+1`` after ``(<keys>) < (<cursor's keys>)``, so a
deep page costs what the first one does (an index range scan) and rows added while a client
pages never shift it: every row is seen exactly once. The cursor is opaque to clients
(base64url of the list's name and the last row's keys) and comes back as ``next_cursor`` and
in a ``Link: <…>; rel="next"`` header. ``total`` scans every matching row, so it is computed
only on request (``?count=true``); ``has_more`` says whether another page exists.
``offset`` still works (without ``cursor``) for clients of the older LIMIT/OFFSET lists.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import marshmallow as ma
import peewee
from flask import after_this_request, g, request

from app.web.api import PageArgsSchema
from app.web.problems import Problem


class KeysetArgsSchema(PageArgsSchema):
    """Query parameters of a cursor-paginated list."""

    cursor = ma.fields.String(
        validate=ma.validate.Length(min=1, max=512),
        metadata={"description": "`next_cursor` of the previous page (opaque); not with `offset`"},
    )
    count = ma.fields.Boolean(
        load_default=False,
        metadata={"description": "Also return `total` (counts every matching row: slower)"},
    )


def keyset_page_schema(item_schema: type[ma.Schema], name: str) -> type[ma.Schema]:
    """Build the ``{items, next_cursor, has_more, limit, total}`` envelope of a keyset list."""
    return ma.Schema.from_dict(
        {
            "items": ma.fields.List(ma.fields.Nested(item_schema)),
            "next_cursor": ma.fields.String(
                allow_none=True,
                metadata={"description": "Pass as `cursor` for the next page; null on the last"},
            ),
            "has_more": ma.fields.Boolean(metadata={"description": "Another page exists"}),
            "limit": ma.fields.Integer(),
            "offset": ma.fields.Integer(),
            "total": ma.fields.Integer(
                metadata={"description": "Items matching the filters (only with `count=true`)"}
            ),
        },
        name=name,
    )


def paginate_keyset(
    query: Any, args: dict[str, Any], keys: Sequence[peewee.Field], name: str
) -> dict[str, Any]:
    """Return one page of ``query``, newest first by ``keys`` (the last one unique).

    Args:
        query: the filtered query, without ORDER BY.
        args: loaded :class:`KeysetArgsSchema` arguments.
        keys: the columns the list is ordered by, all descending; an index must cover them.
        name: the list's name, written into cursors so one list's cursor is refused by another;
            the tenant the request acts in is written in too, so a cursor handed out in one
            tenant is refused (422) in another.
    """
    limit, offset = args["limit"], args["offset"]
    name = f"{name}@{g.get('tenant_id') or ''}"
    ordered = query.order_by(*(key.desc() for key in keys))
    if args.get("cursor"):
        if offset:
            raise Problem(
                422,
                "Use either `cursor` or `offset`, not both.",
                errors={"offset": ["cannot be combined with cursor"]},
            )
        ordered = ordered.where(_before(keys, _decode(args["cursor"], keys, name)))
    page: dict[str, Any] = {"limit": limit, "offset": offset}
    if args.get("count"):
        page["total"] = query.order_by().count()
    rows = list(ordered.limit(limit + 1).offset(offset or None))
    page["has_more"] = len(rows) > limit
    page["items"] = rows[:limit]
    page["next_cursor"] = _encode(rows[limit - 1], keys, name) if page["has_more"] else None
    if page["next_cursor"]:
        _link_next(page["next_cursor"])
    return page


def _before(keys: Sequence[peewee.Field], after: list[Any]) -> Any:
    values = [
        peewee.Value(value, converter=key.db_value) for key, value in zip(keys, after, strict=True)
    ]
    if len(keys) == 1:
        return keys[0] < values[0]
    return peewee.Tuple(*keys) < peewee.Tuple(*values)


def _encode(row: Any, keys: Sequence[peewee.Field], name: str) -> str:
    values = [getattr(row, key.name) for key in keys]
    plain = [value.isoformat() if isinstance(value, datetime) else value for value in values]
    raw = json.dumps([name, *plain], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str, keys: Sequence[peewee.Field], name: str) -> list[Any]:
    invalid = Problem(
        422,
        "The cursor is not one this list returned; start again without it.",
        errors={"cursor": ["invalid cursor"]},
    )
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise invalid from exc
    if not isinstance(decoded, list) or len(decoded) != len(keys) + 1 or decoded[0] != name:
        raise invalid
    try:
        return [_key_value(key, value) for key, value in zip(keys, decoded[1:], strict=True)]
    except (TypeError, ValueError) as exc:
        raise invalid from exc


def _key_value(key: peewee.Field, value: Any) -> Any:
    if isinstance(key, peewee.DateTimeField):
        if not isinstance(value, str):
            raise TypeError(value)
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is not None:
            raise ValueError(value)
        return parsed
    if isinstance(key, peewee.IntegerField):
        if type(value) is not int or not -(2**63) <= value < 2**63:
            raise TypeError(value)
        return value
    if not isinstance(value, str) or len(value) > 200 or "\x00" in value:
        raise TypeError(value)
    return value


def _link_next(cursor: str) -> None:
    params = [(k, v) for k, v in request.args.items(multi=True) if k not in {"cursor", "offset"}]
    target = f"{request.path}?{urlencode([*params, ('cursor', cursor)])}"

    @after_this_request
    def link(response: Any) -> Any:
        response.headers["Link"] = f'<{target}>; rel="next"'
        return response
