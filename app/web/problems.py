"""RFC 9457 problem details: the one path every error response takes."""

from __future__ import annotations

import logging
from typing import Any

import peewee
from flask import Flask, Response, g, has_request_context, json, request
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.http import HTTP_STATUS_CODES

from app.store.outage import RETRY_AFTER, STORE_DOWN, describe, is_outage, which_store

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://switchboard.dev/problems/"

# Short machine-readable slugs for the problem ``type`` URI, by status.
_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    414: "uri-too-long",
    415: "unsupported-media-type",
    422: "validation-error",
    429: "quota-exceeded",
    431: "header-fields-too-large",
    500: "internal-error",
    502: "bad-gateway",
    503: "service-unavailable",
    504: "gateway-timeout",
}


class Problem(HTTPException):
    """An HTTP error with a problem type, detail and optional extra members."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type_slug: str | None = None,
        errors: Any = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(description=detail)
        self.code = status
        self.type_slug = type_slug
        self.errors = errors
        self.extra_headers = headers or {}
        self.extra = extra


def problem_document(
    status: int,
    detail: str | None = None,
    *,
    title: str | None = None,
    type_slug: str | None = None,
) -> dict[str, Any]:
    """The ``type``, ``title``, ``status`` and ``detail`` members of a problem."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + (type_slug or _SLUGS.get(status, "error")),
        "title": title or HTTP_STATUS_CODES.get(status, "Error"),
        "status": status,
    }
    if detail:
        body["detail"] = detail
    return body


def problem_response(
    status: int,
    detail: str | None = None,
    *,
    title: str | None = None,
    type_slug: str | None = None,
    errors: Any = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """Build an ``application/problem+json`` response."""
    body = problem_document(status, detail, title=title, type_slug=type_slug)
    if errors:
        body["errors"] = errors
    if has_request_context():
        body["instance"] = request.path
        if g.get("request_id"):
            body["request_id"] = g.request_id
    body.update(extra)
    response = Response(json.dumps(body), status=status, mimetype="application/problem+json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _validation_errors(exc: HTTPException) -> Any:
    """Flatten webargs' ``{"json": {...}, "query": {...}}`` messages into field → messages."""
    messages = getattr(exc, "data", {}).get("messages") if hasattr(exc, "data") else None
    if not isinstance(messages, dict):
        return None
    flat: dict[str, Any] = {}
    for location_errors in messages.values():
        if isinstance(location_errors, dict):
            flat.update(location_errors)
        else:
            flat["_schema"] = location_errors
    return flat


def handle_http_exception(exc: HTTPException) -> Response:
    """Turn any ``HTTPException`` (ours, werkzeug's, webargs') into problem+json."""
    status = exc.code or 500
    if isinstance(exc, Problem):
        return problem_response(
            status,
            exc.description,
            type_slug=exc.type_slug,
            errors=exc.errors,
            headers=exc.extra_headers,
            **exc.extra,
        )
    errors = _validation_errors(exc)
    detail = exc.description
    if status == 422:
        detail = "The request body or parameters failed validation; see errors."
    elif status == 400 and errors:
        detail = "The request could not be parsed; see errors."
    headers = {}
    if status == 405 and hasattr(exc, "valid_methods") and exc.valid_methods:
        headers["Allow"] = ", ".join(exc.valid_methods)
    return problem_response(status, detail, errors=errors, headers=headers)


def _database_busy(exc: Exception) -> bool:
    """SQLite's write lock stayed taken past the busy timeout: the transaction rolled back."""
    return isinstance(exc, peewee.OperationalError) and "database is locked" in str(exc)


def handle_unexpected(exc: Exception) -> Response:
    """Log an unexpected exception with its trace and answer a bare 500 problem.

    A database too busy to take a write (nothing was changed) is a 503 the client may retry.
    """
    if isinstance(exc, HTTPException):
        return handle_http_exception(exc)
    if _database_busy(exc):
        log.warning("database busy on %s %s: %s", request.method, request.path, exc)
        detail = "The database is busy; nothing was changed. Retry shortly."
        return problem_response(503, detail, headers={"Retry-After": "1"})
    log.exception("unhandled error on %s %s", request.method, request.path)
    return problem_response(500, InternalServerError.description)


def handle_store_down(exc: Exception) -> Response:
    """The database or Redis is unreachable: 503 with ``Retry-After``, one log line, no trace.

    A publish builds its answer before it commits, so this means its transaction did not
    commit (unless the connection broke during COMMIT itself: then the retry with the same
    ``Idempotency-Key`` finds the event and answers ``duplicate: true``, which is the truth).
    A busy SQLite (its write lock) and a broken statement reported as ``OperationalError`` go
    to :func:`handle_unexpected` (503 "busy", and 500 with the trace).
    """
    if _database_busy(exc) or not is_outage(exc):
        return handle_unexpected(exc)
    log.warning("%s %s answered 503: %s", request.method, request.path, describe(exc))
    return problem_response(
        503,
        f"{'Redis' if which_store(exc) == 'Redis' else 'The database'} is unavailable, so the "
        "request was not processed; retry later (with the same Idempotency-Key, if any).",
        headers={"Retry-After": str(RETRY_AFTER)},
    )


def init_app(app: Flask) -> None:
    """Route every error through problem+json."""
    app.register_error_handler(HTTPException, handle_http_exception)
    for store_error in STORE_DOWN:
        app.register_error_handler(store_error, handle_store_down)
    app.register_error_handler(Exception, handle_unexpected)
