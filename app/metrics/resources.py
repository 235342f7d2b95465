"""``GET /metrics``: Prometheus text format, for allowed networks (or the metrics token, when
one is set) or an operator's ``metrics:read`` key."""

from __future__ import annotations

import hmac

from flask import Response, current_app

from app.auth.access import authenticate, client_ip, ip_allowed, presented_key
from app.events.progress import DispatchProgressCollector
from app.metrics.exposition import render
from app.web.api import SECURITY, Blueprint
from app.web.problems import Problem

blp = Blueprint("metrics", __name__, description="Metrics")


@blp.route("/metrics", methods=["GET"])
@blp.doc(
    security=[{}, *SECURITY],
    description="Prometheus text format (version 0.0.4). Answered without a key to clients in "
    "`SWITCHBOARD_METRICS_ALLOWED_NETWORKS` (default: loopback) — or, when "
    "`SWITCHBOARD_METRICS_TOKEN` is set, to any client sending `Authorization: Bearer <token>` "
    "and to no address alone; anyone else needs an operator's platform key with the "
    "`metrics:read` scope (metrics cover every tenant).",
    responses={
        "200": {
            "description": "Every process's counters and histograms, and shared-state gauges",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
@blp.problem(401, "Outside the allowed networks (or no valid metrics token) and no valid API key")
@blp.problem(403, "Not a platform key, or it lacks the `metrics:read` scope")
def metrics() -> Response:
    """Prometheus metrics of every API and worker process."""
    if not _scraper_allowed():
        principal = authenticate().require("metrics:read")
        if not principal.platform:
            raise Problem(403, "Metrics cover every tenant: they need an operator's platform key.")
    body, content_type = render(
        current_app.config["METRICS_MULTIPROC_DIR"], [DispatchProgressCollector()]
    )
    return Response(body, content_type=content_type)


def _scraper_allowed() -> bool:
    """The metrics token when one is set (then no address is trusted alone), else the address."""
    token = current_app.config["METRICS_TOKEN"]
    if token:
        return hmac.compare_digest((presented_key() or "").encode(), token.encode())
    allowed = current_app.config["METRICS_ALLOWED_NETWORKS"]
    return bool(allowed) and ip_allowed(client_ip(), [str(net) for net in allowed])
