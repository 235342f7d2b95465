"""Input hygiene: NUL characters are refused at the door (400), in query strings and JSON.

PostgreSQL cannot store NUL in text columns, and no legitimate API input needs one; refusing
them here keeps a driver error from ever turning into a 500 deep inside a view.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from app.web.problems import Problem


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def refuse_nul(data: Any) -> Any:
    """Return ``data`` (parsed JSON), or raise 400 if any string in it contains NUL."""
    if _has_nul(data):
        raise Problem(400, "NUL characters are not allowed in JSON strings.")
    return data


def init_app(app: Flask) -> None:
    """Install the query-string check (JSON bodies are checked by ``api.ArgumentsParser``)."""

    @app.before_request
    def _refuse_nul_in_query() -> None:
        if "\x00" in request.path:
            raise Problem(400, "NUL characters are not allowed in the path.")
        raw = request.query_string
        if (b"%00" in raw or b"\x00" in raw) and _has_nul(list(request.args.values())):
            raise Problem(400, "NUL characters are not allowed in query parameters.")
