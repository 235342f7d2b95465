"""``GET /api/v1/stream`` (Server-Sent Events) and ``POST /api/v1/stream/tokens``."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from flask import Response, current_app, g, redirect, request, stream_with_context, url_for
from flask.typing import ResponseReturnValue

from app.auth.access import Principal, authenticate, current_principal, presented_key
from app.auth.keys import key_prefix
from app.limits.enforce import enforce as enforce_rate_limit
from app.limits.quotas import requests_limit
from app.metrics import instruments as metrics
from app.store.db import database
from app.store.models import utcnow
from app.stream.access import TOKEN_TTL, issue_token, principal_for_key, redeem_token
from app.stream.hub import get_hub
from app.stream.schemas import StreamArgsSchema, StreamTokenSchema
from app.stream.session import Filters, StreamSession
from app.stream.slots import claim
from app.web.api import Blueprint
from app.web.problems import Problem
from app.web.serving import cooperative

blp = Blueprint("stream", __name__, url_prefix="/api/v1", description="Live stream")

_ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def _patterns(raw: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (raw or "").split(",") if p.strip())


def _caller(args: dict[str, Any]) -> tuple[Principal, str]:
    """The stream's principal and the prefix of the secret it was opened with."""
    token = args.get("token")
    if not token:
        return authenticate(), _presented_prefix()
    key_id, tenant_id, secret_prefix = redeem_token(token)
    principal = principal_for_key(key_id, tenant_id, secret_prefix)
    tenant_limit = None if principal.platform else requests_limit(principal.tenant)
    enforce_rate_limit(principal.key.id, principal.key.rate_limit, tenant_limit=tenant_limit)
    g.principal = principal
    g.tenant_id = principal.tenant_id
    return principal, secret_prefix


def _presented_prefix() -> str:
    """The prefix of the key this request authenticated with (well-formed: it was accepted)."""
    return key_prefix(presented_key() or "") or ""


def _resume_point(args: dict[str, Any]) -> str | None:
    value = request.headers.get("Last-Event-ID") or args.get("last_event_id")
    if value is None or value == "":
        return None
    if not _ENTRY_ID.match(value):
        raise Problem(400, "Last-Event-ID must be a stream entry id such as 1700000000000-0.")
    return value


@blp.route("/stream", methods=["GET"])
@blp.arguments(StreamArgsSchema, location="query")
@blp.doc(
    description="Server-Sent Events of what the caller's key may see (see docs/observability.md: "
    "`event.published`, `delivery.attempted`, `integration.status_changed`, "
    "`job.state_changed`, `log.created`, `alert.fired`, `alert.resolved`). Authenticate with "
    "the usual headers, or `?token=` from `POST /stream/tokens`. Each message's `id` can be "
    "sent back as `Last-Event-ID` (or `?last_event_id=`) to resume without a gap within the "
    "retention window; `: heartbeat` comments keep idle connections open.",
    responses={
        "200": {
            "description": "An endless `text/event-stream`: each message has an `event` name, "
            "`data` (JSON text) and, for entries, an `id` to resume from",
            "content": {
                "text/event-stream": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "event": {"type": "string"},
                            "data": {"type": "string"},
                            "id": {"type": "string"},
                            "retry": {"type": "integer"},
                        },
                    }
                }
            },
        },
        "307": {"description": "Streams are served by the stream service at `Location`"},
    },
)
@blp.problem(400, "Malformed Last-Event-ID or filter")
@blp.problem(401, "Missing, invalid, used or expired key or token")
@blp.problem(429, "Rate limit exceeded, or the key or its owner holds its maximum of streams")
@blp.problem(503, "This process serves its maximum number of streams; retry")
def stream(args: dict[str, Any]) -> ResponseReturnValue:
    """Open the live stream (Server-Sent Events)."""
    target = current_app.config["STREAM_URL"]
    if target and not cooperative():  # a stream would hold one of this server's threads
        query = request.query_string.decode()
        return redirect(target + ("?" + query if query else ""), code=307)
    last_event_id = _resume_point(args)
    principal, secret_prefix = _caller(args)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    hub = get_hub(app)
    if hub.client_count() >= current_app.config["STREAM_MAX_CLIENTS"]:
        raise Problem(
            503, "This server holds its maximum of open streams.", headers={"Retry-After": "5"}
        )
    filters = Filters(
        _patterns(args.get("types")),
        _patterns(args.get("event_types")),
        args.get("integration_id"),
        args.get("webhook_id"),
    )
    session = StreamSession(
        app, hub, principal, secret_prefix, filters, current_app.config["STREAM_HEARTBEAT"]
    )
    slot = claim(
        hub.client,
        principal.key.id,
        principal.user.id if principal.user is not None else None,
        current_app.config["STREAM_MAX_PER_KEY"],
        current_app.config["STREAM_MAX_PER_USER"],
    )
    if not database.is_closed():
        database.close()  # a stream lives long: it must not keep a database connection
    subscriber, start_after = hub.subscribe(
        request.environ.get("gunicorn.socket"), session.visible, slot
    )
    metrics.stream_connection("opened")
    response = Response(
        stream_with_context(session.run(subscriber, start_after, last_event_id)),
        mimetype="text/event-stream",
    )
    # A stream whose body never started (the client left first) still gives its slot back.
    response.call_on_close(lambda: hub.unsubscribe(subscriber))
    response.headers["Cache-Control"] = "no-cache, no-transform"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass events through at once
    return response


@blp.route("/stream/tokens", methods=["POST"])
@blp.auth(None)
@blp.response(201, StreamTokenSchema)
@blp.problem(503, "Redis is unavailable")
def create_stream_token() -> dict[str, Any]:
    """Trade the key for a single-use stream token valid for 60 seconds (for EventSource)."""
    principal = current_principal()
    token = issue_token(principal.key.id, principal.tenant_id, _presented_prefix())
    base = current_app.config["STREAM_URL"] or url_for("stream.stream", _external=True)
    return {
        "token": token,
        "url": base + "?" + urlencode({"token": token}),
        "expires_in": TOKEN_TTL,
        "expires_at": utcnow() + timedelta(seconds=TOKEN_TTL),
    }
