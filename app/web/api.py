"""The API's one home for flask-smorest customisation: ``Api``, ``Blueprint`` and pagination.

- errors are documented and answered as RFC 9457 problem+json;
- ``Blueprint.auth(scope)`` authenticates the caller, checks the scope and documents both;
- ``paginate`` pages a peewee query in SQL (LIMIT/OFFSET) into a ``{items, total, …}`` envelope.
"""

from __future__ import annotations

import functools
import http
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import marshmallow as ma
from apispec import BasePlugin
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import current_app
from flask_smorest import Api as _Api
from flask_smorest import Blueprint as _Blueprint
from flask_smorest.spec import prepare_response
from flask_smorest.utils import resolve_schema_instance
from peewee import SQL, fn
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from app.web import problems
from app.web.constraints import dict_key_constraints, nul_free_strings
from app.web.dumping import accelerate
from app.web.hygiene import parse_json_body

PROBLEM_CONTENT_TYPE = "application/problem+json"
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyHeader": []}]


class ProblemSchema(ma.Schema):
    """RFC 9457 problem details (documentation only)."""

    type = ma.fields.String(metadata={"description": "URI identifying the problem type"})
    title = ma.fields.String(metadata={"description": "Short summary of the problem type"})
    status = ma.fields.Integer(metadata={"description": "HTTP status code"})
    detail = ma.fields.String(metadata={"description": "What went wrong in this request"})
    instance = ma.fields.String(metadata={"description": "The request path"})
    request_id = ma.fields.String(metadata={"description": "Correlates with server logs"})
    errors = ma.fields.Dict(metadata={"description": "Field name → list of messages"})


def schema_name(schema: type[ma.Schema] | ma.Schema) -> str:
    """OpenAPI component name: the class name without ``Schema``; partial variants get ``Patch``."""
    cls = schema if isinstance(schema, type) else type(schema)
    name = cls.__name__.removesuffix("Schema")
    if not isinstance(schema, type) and schema.partial:
        name += "Patch"
    return name


class PathNulPlugin(BasePlugin):
    """Documents the 400 of every operation with a path parameter: NUL in the path is refused
    before routing (``app.web.hygiene``), whatever the operation takes."""

    def path_helper(
        self,
        path: str | None = None,
        operations: dict[str, Any] | None = None,
        parameters: list[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not any(isinstance(p, dict) and p.get("in") == "path" for p in parameters or ()):
            return
        for operation in (operations or {}).values():
            responses = operation.setdefault("responses", {})
            if 400 not in responses and "400" not in responses:  # keys may be ints or strings
                responses["400"] = {
                    "description": "A path parameter contains NUL",
                    "content": {PROBLEM_CONTENT_TYPE: {"schema": ProblemSchema}},
                }


class RequestLimitsPlugin(BasePlugin):
    """Documents what any request may get before it reaches an operation: 414 for an over-long
    URL, 431 for oversized headers (``app.web.gunicorn_conf``)."""

    def operation_helper(
        self, path: str | None = None, operations: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        for operation in (operations or {}).values():
            responses = operation.setdefault("responses", {})
            for status, description in (
                ("414", "The URL is too long"),
                ("431", "The request's header fields are too large"),
            ):
                responses.setdefault(
                    status,
                    {
                        "description": description,
                        "content": {PROBLEM_CONTENT_TYPE: {"schema": ProblemSchema}},
                    },
                )


class ConstrainedMarshmallowPlugin(MarshmallowPlugin):
    """apispec's marshmallow plugin, publishing that no string may hold NUL."""

    def init_spec(self, spec: Any) -> None:
        super().init_spec(spec)
        assert self.converter is not None
        self.converter.add_attribute_function(nul_free_strings)
        self.converter.add_attribute_function(dict_key_constraints)


class SchemaExtrasPlugin(BasePlugin):
    """Publishes a schema class's ``JSON_SCHEMA_EXTRA`` (full, not partial, variants only)."""

    def schema_helper(self, name: str, definition: Any, **kwargs: Any) -> dict[str, Any] | None:
        schema = kwargs.get("schema")
        if schema is None or (not isinstance(schema, type) and schema.partial):
            return None
        cls = schema if isinstance(schema, type) else type(schema)
        extra: dict[str, Any] | None = getattr(cls, "JSON_SCHEMA_EXTRA", None)
        return extra


class Api(_Api):
    """flask-smorest ``Api`` answering and documenting errors as problem+json."""

    ERROR_SCHEMA = ProblemSchema

    def __init__(self, app: Any = None) -> None:
        plugin = ConstrainedMarshmallowPlugin(schema_name_resolver=schema_name)
        extra = [PathNulPlugin(), RequestLimitsPlugin(), SchemaExtrasPlugin()]
        super().__init__(app, spec_kwargs={"marshmallow_plugin": plugin, "extra_plugins": extra})

    def handle_http_exception(self, error):
        return problems.handle_http_exception(error)

    def _register_responses(self) -> None:
        for status in http.HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if status >= 400:
                response["schema"] = self.ERROR_SCHEMA
            prepare_response(response, self.spec, PROBLEM_CONTENT_TYPE)
            self.spec.components.response(status.name, response, lazy=True)
        default = {"description": "Error (problem+json)", "schema": self.ERROR_SCHEMA}
        prepare_response(default, self.spec, PROBLEM_CONTENT_TYPE)
        self.spec.components.response("DEFAULT_ERROR", default, lazy=True)


#: Beyond 2**53 a float no longer holds every integer: such a "whole" float is not taken as one.
_EXACT_FLOAT_INTEGERS = 2**53


def _json_integers(schema: ma.Schema, data: Any) -> Any:
    """``data`` with whole-number floats (``779.0``) as ints where ``schema`` wants an Integer.

    JSON has one number type and JSON Schema's ``integer`` includes ``779.0``; marshmallow's
    strict ``Integer`` would refuse it. Only fields declared Integer are touched: free-form
    data (event payloads, metadata) passes through exactly as sent.
    """
    if not isinstance(data, dict):
        return data
    loaded = dict(data)
    for name, field in schema.fields.items():
        key = field.data_key or name
        if key in loaded:
            loaded[key] = _json_integer(field, loaded[key])
    return loaded


def _json_integer(field: ma.fields.Field, value: Any) -> Any:
    if isinstance(field, ma.fields.Integer):
        whole = isinstance(value, float) and value.is_integer()
        return int(value) if whole and abs(value) <= _EXACT_FLOAT_INTEGERS else value
    if isinstance(field, ma.fields.Nested) and isinstance(field.schema, ma.Schema):
        if field.many and isinstance(value, list):
            return [_json_integers(field.schema, item) for item in value]
        return _json_integers(field.schema, value)
    if isinstance(field, ma.fields.List) and isinstance(value, list):
        return [_json_integer(field.inner, item) for item in value]
    return value


class ArgumentsParser(FlaskParser):
    """webargs' Flask parser, parsing JSON bodies strictly (see ``app.web.hygiene``)."""

    def _load_location_data(self, *, schema: ma.Schema, req: Any, location: str) -> Any:
        data = super()._load_location_data(schema=schema, req=req, location=location)
        return _json_integers(schema, data) if location == "json" else data

    def _raw_load_json(self, req: Any) -> Any:
        if not is_json_request(req):
            return core.missing
        body = req.get_data(cache=True)
        return core.missing if body == b"" else parse_json_body(body)


class Blueprint(_Blueprint):
    """flask-smorest ``Blueprint`` with an ``auth`` decorator and problem-typed errors."""

    ARGUMENTS_PARSER = ArgumentsParser()

    def problem(self, status: int, description: str) -> Callable[[Callable], Callable]:
        """Document an error response of this operation."""
        return self.alt_response(
            status,
            schema=ProblemSchema,
            content_type=PROBLEM_CONTENT_TYPE,
            description=description,
        )

    def response(self, status_code: int | str, schema: Any = None, **kwargs: Any) -> Callable:
        """``Blueprint.response`` whose schema dumps through :mod:`app.web.dumping`."""
        if schema is not None and not isinstance(schema, str | dict):
            schema = accelerate(resolve_schema_instance(schema))
        return super().response(status_code, schema, **kwargs)

    def arguments(self, schema: Any, *, location: str = "json", **kwargs: Any) -> Callable:
        """``Blueprint.arguments`` that also documents the 400 for unparsable input."""
        decorator = super().arguments(schema, location=location, **kwargs)
        why = {
            "json": "The body is not strict JSON (RFC 8259: no NaN or Infinity, no lone "
            "surrogates, numbers in range), or a string in it contains NUL",
            "query": "A query parameter contains NUL",
        }.get(location)
        if why is None:
            return decorator

        def documented(view: Callable) -> Callable:
            return self.problem(400, why)(decorator(view))

        return documented

    def auth(self, scope: str | None) -> Callable[[Callable], Callable]:
        """Require a valid API key (and ``scope``, if given) before the view runs.

        The authenticator is ``app.extensions["authenticate"]``, bound by
        :func:`app.auth.access.init_app`, so the HTTP shell does not import the auth package.
        """

        def decorator(view: Callable) -> Callable:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                current_app.extensions["authenticate"]().require(scope)
                return view(*args, **kwargs)

            note = f"Requires scope `{scope}`." if scope else "Requires any valid API key."
            documented: Callable = self.doc(security=SECURITY, description=note)(wrapper)
            for status, text in (
                (401, "Missing, invalid, expired or revoked API key"),
                (403, "Key or its owner's role lacks the scope, or client IP not allowed"),
                (
                    429,
                    "Rate limit exceeded: retry after `Retry-After` seconds "
                    "(`RateLimit` and `RateLimit-Policy` headers show the quota)",
                ),
                (503, "A backing service (such as the rate limiter) is unavailable; retry later"),
            ):
                documented = self.problem(status, text)(documented)
            return documented

        return decorator


def links_to(
    parameter: str,
    *operations: str,
    status: str = "201",
    value: str = "$response.body#/id",
    parent: str | None = None,
) -> dict[str, Any]:
    """OpenAPI ``links`` from this operation's ``status`` answer to ``operations`` (each
    ``"METHOD /path"``), passing ``value`` (an id the answer holds) as their ``{parameter}``,
    and for a nested resource this request's own ``{parent}`` path parameter as theirs.

    They let clients (and schemathesis' stateful tests) follow the id from the answer into
    every operation on that resource.
    """
    parameters = {parameter: value}
    if parent is not None:
        parameters[parent] = f"$request.path.{parent}"
    links = {}
    for operation in operations:
        method, path = operation.split(" ", 1)
        ref = "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method.lower()
        words = re.split(r"[^A-Za-z]+", path.removeprefix("/api/v1"))
        links[method.capitalize() + "".join(word.capitalize() for word in words)] = {
            "operationRef": ref,
            "parameters": parameters,
        }
    return {"responses": {status: {"links": links}}}


class UTCDateTime(ma.fields.DateTime):
    """ISO-8601 datetime: dumps stored naive-UTC values with ``Z``; loads into naive UTC."""

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime:
        parsed: datetime = super()._deserialize(value, attr, data, **kwargs)
        if parsed.tzinfo is not None:
            try:
                parsed = parsed.astimezone(UTC).replace(tzinfo=None)
            except OverflowError as exc:
                raise ma.ValidationError("date is out of range") from exc
        return parsed


class PageArgsSchema(ma.Schema):
    """Pagination query parameters shared by every list."""

    limit = ma.fields.Integer(
        load_default=20,
        validate=ma.validate.Range(min=1, max=200),
        metadata={"description": "Items per page (1–200)"},
    )
    offset = ma.fields.Integer(
        load_default=0,
        validate=ma.validate.Range(min=0, max=10_000_000),
        metadata={"description": "Items to skip"},
    )


def page_schema(item_schema: type[ma.Schema], name: str) -> type[ma.Schema]:
    """Build the ``{items, total, limit, offset}`` envelope schema for a list response."""
    return ma.Schema.from_dict(
        {
            "items": ma.fields.List(ma.fields.Nested(item_schema)),
            "total": ma.fields.Integer(metadata={"description": "Items matching the filters"}),
            "limit": ma.fields.Integer(),
            "offset": ma.fields.Integer(),
        },
        name=name,
    )


_PAGE_TOTAL = "_page_total"


def paginate(query: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Return one page of ``query`` (LIMIT/OFFSET in SQL) with the total count.

    One statement: the total is a scalar subquery on each row (the database runs it once), so
    a page costs one round trip; only a page past the end, with no row to carry it, needs a
    second ``COUNT``. A grouped or DISTINCT query is counted on its own, as peewee counts it.
    """
    limit, offset = args["limit"], args["offset"]
    if query._group_by or query._distinct:
        return {
            "items": list(query.limit(limit).offset(offset)),
            "total": query.order_by().count(),
            "limit": limit,
            "offset": offset,
        }
    total = query.order_by().select(fn.COUNT(SQL("*")))
    items = list(query.select_extend(total.alias(_PAGE_TOTAL)).limit(limit).offset(offset))
    return {
        "items": items,
        "total": getattr(items[0], _PAGE_TOTAL) if items else query.order_by().count(),
        "limit": limit,
        "offset": offset,
    }
