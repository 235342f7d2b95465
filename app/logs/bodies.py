"""Logged request and response bodies (the gateway's ``log_bodies``): who may read them.

Bodies are masked when logged (:mod:`app.gateway.redaction`), yet they remain what callers and
upstreams sent. Only keys that may configure integrations (``integrations:write``, which is what
turns ``log_bodies`` on) read them; every other ``logs:read`` key (read-only users' included)
gets the log entries without them, and the live stream never carries them.
"""

from __future__ import annotations

from typing import Any

BODY_FIELDS = ("request_body", "response_body")
BODIES_SCOPE = "integrations:write"


def without_bodies(event_data: Any) -> Any:
    """``event_data`` without the logged bodies (unchanged when it has none)."""
    if not isinstance(event_data, dict) or not any(f in event_data for f in BODY_FIELDS):
        return event_data
    return {k: v for k, v in event_data.items() if k not in BODY_FIELDS}
