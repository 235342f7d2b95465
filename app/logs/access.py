"""The access log: one line per API request (request id, key prefix, route, status, latency)."""

from __future__ import annotations

import logging
import time

from flask import Response, g, request

from app.logs.structured import ACCESS_LOGGER

log = logging.getLogger(ACCESS_LOGGER)


def log_request(response: Response) -> Response:
    """Log the finished request (for streamed answers: until the headers were ready)."""
    if not log.isEnabledFor(logging.INFO):
        return response
    started = g.get("request_started")
    duration_ms = round((time.perf_counter() - started) * 1000, 2) if started else None
    principal = g.get("principal")
    rule = request.url_rule
    fields = {
        "method": request.method,
        "path": request.path,
        "route": rule.rule if rule is not None else None,
        "status": response.status_code,
        "duration_ms": duration_ms,
        "key_prefix": principal.key.key_prefix if principal is not None else None,
        "remote_addr": request.remote_addr,
    }
    log.info(
        "%s %s %s %sms",
        request.method,
        request.path,
        response.status_code,
        duration_ms,
        extra={"fields": fields},
    )
    return response
