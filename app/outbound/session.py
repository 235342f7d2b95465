"""The app's outbound HTTP: one SSRF-guarded, pooled session per process, and URL checks."""

from __future__ import annotations

import logging
import threading

from flask import current_app

from app import __version__
from app.outbound.guard import GuardedSession, UnsafeURL, check_url, make_session

USER_AGENT = f"Switchboard/{__version__}"
_lock = threading.Lock()
log = logging.getLogger(__name__)


def outbound_session() -> GuardedSession:
    """The shared guarded session for the current app (thread-safe connection pool)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    session: GuardedSession | None = app.extensions.get("outbound_session")
    if session is None:
        with _lock:
            session = app.extensions.get("outbound_session")
            if session is None:
                session = make_session(allowed_networks(), pool_maxsize=64, user_agent=USER_AGENT)
                app.extensions["outbound_session"] = session
    return session


def allowed_networks() -> tuple:
    """Networks ``SWITCHBOARD_ALLOWED_NETWORKS`` opens past the SSRF guard."""
    return tuple(current_app.config["ALLOWED_NETWORKS"])


def check_outbound_url(url: str) -> None:
    """Raise ``UnsafeURL`` unless ``url`` is http(s) and resolves only to allowed addresses."""
    check_url(url, allowed_networks())


def unsafe_url_reason(exc: UnsafeURL) -> str:
    """What the caller learns about a refused URL: the reason, not how our DNS resolved it."""
    log.info("refused outbound URL: %s", exc)
    if exc.unresolvable:
        return "the URL's host does not resolve"
    reason = str(exc).rsplit(": ", 1)[-1]
    return f"the URL is not allowed ({reason}); SWITCHBOARD_ALLOWED_NETWORKS can open a range"
