"""CORS for browser frontends: exact allowed origins from ``SWITCHBOARD_CORS_ORIGINS``.

Keys travel in headers, never cookies, so credentials are never allowed; ``*`` is accepted as
"any origin" and answered with a literal ``*`` (never echoed with credentials).
"""

from __future__ import annotations

from flask import Flask, Response, request

ALLOWED_HEADERS = "Authorization, X-API-Key, Content-Type, Idempotency-Key, X-Request-Id"
EXPOSED_HEADERS = "RateLimit, RateLimit-Policy, Retry-After, X-Request-Id, Location"


def init_app(app: Flask) -> None:
    """Answer preflights and add CORS headers for allowed origins."""
    origins = set(app.config["CORS_ORIGINS"])
    if not origins:
        return

    @app.after_request
    def _cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if not origin:
            return response
        if "*" in origins:
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.vary.add("Origin")
        else:
            return response
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            response.headers["Access-Control-Allow-Methods"] = (
                "GET, POST, PUT, PATCH, DELETE, OPTIONS"
            )
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
        return response
