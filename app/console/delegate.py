"""The console's pages act through the REST API itself, as the session's principal.

A page never re-implements a rule: it calls the same endpoint a key holder would (in-process,
through the WSGI app), so scopes, validation, the SSRF guard, quotas, audit and problem
messages are the API's own. The principal travels in the WSGI environ, which no client can set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app, g, request
from werkzeug.test import Client

from app.auth.access import DELEGATED_PRINCIPAL, Principal
from app.logs.structured import bind_request_id


@dataclass
class Answer:
    """An API answer: its status and JSON body (a problem's, when ``status`` ≥ 400)."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def detail(self) -> str:
        """The problem's plain-language explanation."""
        if isinstance(self.body, dict):
            return str(self.body.get("detail") or self.body.get("title") or "")
        return f"The request failed ({self.status})."

    @property
    def field_errors(self) -> dict[str, str]:
        """The first message for each field named in the problem."""
        errors = self.body.get("errors") if isinstance(self.body, dict) else None
        shown: dict[str, str] = {}
        for field, messages in (errors or {}).items():
            if isinstance(messages, list) and messages:
                shown[field] = str(messages[0])
            elif isinstance(messages, dict):  # nested (e.g. theme.accent): the first leaf
                shown[field] = str(next(iter(messages.values()), ""))
        return shown


def call_api(
    principal: Principal,
    method: str,
    path: str,
    *,
    json: Any = None,
    query: dict[str, Any] | None = None,
) -> Answer:
    """Call ``/api/v1{path}`` as ``principal`` and return the answer."""
    environ = {
        DELEGATED_PRINCIPAL: principal,
        "REMOTE_ADDR": request.remote_addr or "",  # audit entries name the browser's address
    }
    headers = {"X-Request-Id": g.get("request_id") or ""}
    params = {k: v for k, v in (query or {}).items() if v not in (None, "")}
    response = Client(current_app).open(
        "/api/v1" + path,
        base_url=request.host_url,  # links the API builds name the host the browser uses
        method=method,
        json=json,
        query_string=params,
        headers=headers,
        environ_base=environ,
    )
    try:
        body = response.get_json(silent=True) if response.data else None
    finally:
        response.close()
        bind_request_id(g.get("request_id"))  # the inner request's end unbound it
    return Answer(response.status_code, body)
