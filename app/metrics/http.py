"""Request metrics: every API response counted by route template, method and status."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from app.metrics import instruments


def _count(response: Response) -> Response:
    started = g.get("request_started")
    if started is not None:
        rule = request.url_rule
        instruments.http_request(
            rule.rule if rule is not None else "unmatched",
            request.method,
            response.status_code,
            time.perf_counter() - started,
        )
    return response


def init_app(app: Flask) -> None:
    """Count every response (``g.request_started`` is set by the app's first hook)."""
    app.after_request(_count)
