"""``/gateway/{integration_id}/{path}``: proxy to a ``rest`` integration's upstreams."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import peewee
import redis
from flask import (
    Flask,
    Response,
    current_app,
    g,
    has_app_context,
    request,
    stream_with_context,
    url_for,
)
from flask.typing import ResponseReturnValue
from werkzeug.routing import PathConverter

from app.auth.access import current_tenant_id
from app.connectors.configs import decrypt_config
from app.connectors.contract import TokenUnavailable
from app.gateway.answer_headers import client_headers
from app.gateway.balancer import Upstream, gateway_balancer
from app.gateway.capacity import bound_client_waits, gateway_session, in_flight
from app.gateway.logwriter import gateway_log_writer
from app.gateway.proxy import (
    LOGGED_BODY_BYTES,
    AllUpstreamsDown,
    CountingStream,
    UpstreamFailed,
    UpstreamSaturated,
    discard,
    elapsed_ms,
    outgoing_headers,
    safe_path,
    send_with_retries,
    stream_body,
    upstream_url,
)
from app.gateway.redaction import redact_text
from app.limits.enforce import usage_buffer
from app.metrics import instruments as metrics
from app.oauth.tokens import access_token
from app.outbound.session import allowed_networks
from app.store.db import database, release_connection
from app.store.models import Integration
from app.web.api import Blueprint
from app.web.problems import Problem

blp = Blueprint("gateway", __name__, url_prefix="/api/v1", description="API gateway")

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


_ID_PLACEHOLDER = "\x00integration\x00"
_TENANT_PLACEHOLDER = "\x00tenant\x00"
# Per database (the SQL differs by dialect): the lookup's SQL text and its parameters.
_lookup_sql: weakref.WeakKeyDictionary[peewee.Database, tuple[str, list[Any]]] = (
    weakref.WeakKeyDictionary()
)


def _find_integration(tenant_id: str, integration_id: str) -> Integration | None:
    """``Integration.get_of(tenant_id, Integration.id == integration_id)``, SQL built once.

    This runs on every proxied request, and peewee takes several times longer to build the
    SQL than SQLite takes to run it; ``Model.raw`` hydrates exactly the same row.
    """
    db = database.obj
    cached = _lookup_sql.get(db)
    if cached is None:
        query = Integration.of(_TENANT_PLACEHOLDER).where(Integration.id == _ID_PLACEHOLDER)
        cached = _lookup_sql[db] = query.limit(1).sql()
    sql, params = cached
    values = {_ID_PLACEHOLDER: integration_id, _TENANT_PLACEHOLDER: tenant_id}
    bound = [values.get(param, param) for param in params]
    return next(iter(Integration.raw(sql, *bound)), None)


def _rest_integration(integration_id: str) -> tuple[Integration, dict[str, Any]]:
    row = _find_integration(current_tenant_id(), integration_id)
    if row is None or row.provider != "rest":
        raise Problem(404, f"No `rest` integration {integration_id!r} to proxy to.")
    if row.status == "inactive":
        raise Problem(409, "This integration is inactive; set its status to active to proxy.")
    return row, decrypt_config(row.config)


def _credentials(
    build: Any, row: Integration, config: dict[str, Any], rejected: str | None
) -> dict[str, str]:
    """The upstream credentials; an OAuth2 token of the integration's own tenant is fetched
    (refreshed if needed) for them."""
    try:
        headers: dict[str, str] = build(
            config, lambda iid: access_token(row.tenant_id, iid, rejected)
        )
    except TokenUnavailable as exc:
        if exc.retryable:
            raise Problem(503, f"Upstream credentials are unavailable: {exc.message}.") from None
        raise Problem(502, f"Upstream credentials are unavailable: {exc.message}.") from None
    return headers


def _log(row: Integration, status: str, data: dict[str, Any], error: str | None, ms: float) -> None:
    """Queue the request's log row; the writer stores it off the request path."""
    gateway_log_writer(current_app._get_current_object()).add(  # type: ignore[attr-defined]
        tenant_id=row.tenant_id,
        integration_id=row.id,
        event_type="gateway.request",
        event_data=data,
        status=status,
        error_message=error,
        response_time_ms=ms,
    )


class GatewayPath(PathConverter):
    """Any path, empty segments (``//``) and a leading ``/`` included: what the client sent
    goes to the upstream as it is, never merged and redirected."""

    regex = ".*?"
    part_isolating = False  # it spans segments (werkzeug infers that only from a "/" in regex)


blp.record_once(lambda state: state.app.url_map.converters.update(gateway_path=GatewayPath))


@blp.route(
    "/gateway/<integration_id>/", defaults={"path": ""}, methods=METHODS, merge_slashes=False
)
@blp.route("/gateway/<integration_id>/<gateway_path:path>", methods=METHODS, merge_slashes=False)
@blp.auth("gateway:use")
@blp.doc(
    description="Requires scope `gateway:use`. Proxies to the `rest` integration's upstreams "
    "(weighted round robin, passive health checks, retries for idempotent methods, Kong-style "
    "request transformation, upstream credentials from the integration). The response is the "
    "upstream's, streamed; Switchboard errors are problem+json.",
    responses={
        "200": {
            "description": "The upstream's response, streamed as received: any content type "
            "(JSON, text/html, binary), with the upstream's status code",
            "content": {"*/*": {"schema": {}}},
        },
        "default": {
            "description": "Any other status the upstream answered, passed through with its "
            "own content type (an upstream's 404 or 500 is not problem+json)",
            "content": {"*/*": {"schema": {}}},
        },
    },
)
@blp.problem(400, "The path climbs out of the upstream's base URL")
@blp.problem(404, "No such rest integration")
@blp.problem(409, "The integration is inactive")
@blp.problem(502, "The upstream failed or could not be reached, or its OAuth2 token is gone")
@blp.problem(
    503,
    "Every upstream is ejected, Redis is unavailable, a token refresh failed, or the upstream "
    "or the integration is at its concurrency limit (with `Retry-After`)",
)
@blp.problem(504, "The upstream did not answer in time")
def proxy(integration_id: str, path: str) -> ResponseReturnValue:
    """Proxy a request to the integration's upstreams."""
    started = time.perf_counter()
    try:
        path = safe_path(path)
    except ValueError as exc:
        raise Problem(400, f"Invalid gateway path: {exc}.") from exc
    row, config = _rest_integration(integration_id)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    counter = in_flight(app)
    if not counter.enter(row.id):
        metrics.gateway_refused(row.id, "in_flight_limit")
        raise Problem(
            503,
            f"This integration has {counter.limit} requests in flight here, its limit "
            "(SWITCHBOARD_GATEWAY_MAX_IN_FLIGHT); retry shortly.",
            headers={"Retry-After": "1"},
        )
    timeout = float(config.get("timeout_ms", 10000)) / 1000
    waits = bound_client_waits(request.environ, timeout)

    def done() -> None:
        counter.leave(row.id)
        waits.restore()

    try:
        return _forward(app, row, config, path, timeout, started, done)
    except BaseException:
        done()  # no answer to stream: the request ends here
        raise


def _forward(  # noqa: PLR0915 - one request's life, step by step
    app: Flask,
    row: Integration,
    config: dict[str, Any],
    path: str,
    timeout: float,
    started: float,
    done: Callable[[], None],
) -> ResponseReturnValue:
    """Send the request upstream and stream the answer back; ``done`` runs once it ended."""
    from plugins.rest import build_auth_headers, oauth_integration_id

    weights: dict[str, int] = {}  # the same URL listed twice is one upstream, weights added
    for upstream in config["upstreams"]:
        weights[upstream["url"]] = weights.get(upstream["url"], 0) + int(upstream.get("weight", 1))
    upstreams = [Upstream(url, weight) for url, weight in weights.items()]
    credentials = _credentials(build_auth_headers, row, config, None)
    headers, query = outgoing_headers(request, config, credentials, g.request_id)
    log_bodies = bool(config.get("log_bodies"))
    # Proxied bodies stream through, so they get their own (larger) limit than API bodies.
    request.max_content_length = current_app.config["GATEWAY_MAX_BODY_BYTES"]
    has_body = request.content_length or request.headers.get("Transfer-Encoding")
    body = (
        CountingStream(
            request.stream, len=request.content_length, keep=LOGGED_BODY_BYTES if log_bodies else 0
        )
        if has_body
        else None
    )
    record: dict[str, Any] = {"method": request.method, "path": "/" + path}
    release_connection()  # the upstream call may be long: the database is not needed there
    sent = time.perf_counter()

    def send(headers: list[tuple[str, str]]) -> Any:
        return send_with_retries(
            session=gateway_session(app, allowed_networks()),
            balancer=gateway_balancer(),
            pool_id=row.id,
            upstreams=upstreams,
            method=request.method,
            path=path,
            headers=headers,
            query=query,
            body=body,
            timeout=timeout,
            queue_seconds=float(app.config["GATEWAY_QUEUE_SECONDS"]),
        )

    try:
        attempt = send(headers)
        if attempt.response.status == 401 and oauth_integration_id(config) and body is None:
            # The provider revoked or expired the token early: refresh once (forced) and retry.
            discard(attempt.response)
            rejected = credentials["Authorization"].removeprefix("Bearer ")
            credentials = _credentials(build_auth_headers, row, config, rejected)
            headers, query = outgoing_headers(request, config, credentials, g.request_id)
            attempt = send(headers)
            record["token_refreshed"] = True
    except UpstreamSaturated as exc:
        record["upstream"] = exc.upstream
        metrics.gateway_refused(row.id, "upstream_saturated")
        metrics.gateway_request(row.id, exc.upstream, 503, None)
        _log(row, "error", record, str(exc), elapsed_ms(started))
        raise Problem(
            503,
            "Upstream saturated: every connection to it is busy; retry shortly.",
            headers={"Retry-After": "1"},
        ) from exc
    except AllUpstreamsDown as exc:
        metrics.gateway_request(row.id, None, 503, None)
        _log(row, "error", record, str(exc), elapsed_ms(started))
        raise Problem(503, "All upstreams are unavailable; retry shortly.") from exc
    except UpstreamFailed as exc:
        record["upstream"] = exc.upstream
        metrics.gateway_request(row.id, exc.upstream, exc.status, None)
        _log(row, "error", record, str(exc), elapsed_ms(started))
        raise Problem(exc.status, str(exc)) from exc
    except redis.RedisError as exc:
        raise Problem(503, "The gateway's shared state (Redis) is unavailable.") from exc

    upstream_response = attempt.response
    metrics.gateway_request(
        row.id, attempt.upstream.url, upstream_response.status, time.perf_counter() - sent
    )
    record.update(
        upstream=attempt.upstream.url,
        status_code=upstream_response.status,
        attempts=attempt.attempts,
        bytes_in=0,
        bytes_out=0,
    )
    kept = bytearray()
    key_id = g.principal.key.id

    def on_chunk(chunk: bytes) -> None:
        record["bytes_out"] += len(chunk)
        if log_bodies and len(kept) < LOGGED_BODY_BYTES:
            kept.extend(chunk[: LOGGED_BODY_BYTES - len(kept)])

    streamed, finished = False, False

    def finish() -> None:
        """Log the request and settle the upstream connection, once, however the answer ended."""
        nonlocal finished
        if finished:
            return
        finished = True
        done()
        if not streamed:  # the server sent no body: HEAD, 204, 304, or a client gone early
            if request_method == "HEAD" or upstream_response.status in (204, 304):
                upstream_response.drain_conn()  # nothing to read: keep the connection
                upstream_response.release_conn()
            else:
                discard(upstream_response)
        record["bytes_in"] = body.sent if body else 0
        if log_bodies:
            record["request_body"] = (
                redact_text(bytes(body.head).decode("utf-8", "replace")) if body else ""
            )
            record["response_body"] = redact_text(kept.decode("utf-8", "replace"))
        ok = upstream_response.status < 500
        # Streamed, this runs in the request's context; on close, after it is gone.
        with nullcontext() if has_app_context() else app.app_context():
            buffer = usage_buffer()
            buffer.add_bytes(key_id, record["bytes_out"])
            buffer.count_tenant(row.tenant_id, "gateway_calls")
            _log(
                row,
                "success" if ok else "error",
                record,
                None if ok else f"upstream answered {upstream_response.status}",
                elapsed_ms(started),
            )

    def body_then_log() -> Any:
        nonlocal streamed
        streamed = True
        try:
            yield from stream_body(upstream_response, on_chunk)
        finally:
            finish()

    request_method = request.method
    response = Response(
        stream_with_context(body_then_log()),
        status=upstream_response.status,
        headers=client_headers(
            upstream_response,
            upstream_url(attempt.upstream.url, path, query),
            [upstream.url for upstream in upstreams],
            url_for("gateway.proxy", integration_id=row.id, path=""),
            bool(config.get("allow_cookies")),
        ),
        direct_passthrough=True,
    )
    response.call_on_close(finish)  # also when the body is never iterated
    response.headers["X-Request-Id"] = g.request_id
    return response
