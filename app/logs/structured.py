"""Process logs: one format for API and workers (``SWITCHBOARD_LOG_FORMAT=json|text``).

Every line carries the request id of the API request it belongs to: the web process sets it
per request, RQ jobs carry it in ``job.meta`` (set by :func:`job_meta` when enqueued) and the
worker restores it while the job runs, and events remember it so that each delivery attempt
is logged with the id of the request that published the event.

In ``json`` mode each record is one JSON object per line: ``time``, ``level``, ``logger``,
``message``, ``request_id`` (when known), the fields a caller passed as ``extra={"fields":
{…}}``, and ``exc_info`` as text. ``text`` mode keeps the classic one-line layout and appends
``request_id=…`` when there is one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_request_id: ContextVar[str | None] = ContextVar("switchboard_request_id", default=None)

ACCESS_LOGGER = "switchboard.access"
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def current_request_id() -> str | None:
    """The request id this thread (or greenlet) is working for, if any."""
    return _request_id.get()


def bind_request_id(request_id: str | None) -> None:
    """Make ``request_id`` the current one (the web process calls this per request)."""
    _request_id.set(request_id)


@contextlib.contextmanager
def request_id_bound(request_id: str | None) -> Iterator[None]:
    """Run a block (a job, a delivery) under ``request_id``, restoring the previous one."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


def job_meta(meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """``meta`` for an RQ job, with the current request id so the worker can log it."""
    request_id = current_request_id()
    merged = dict(meta or {})
    if request_id is not None:
        merged.setdefault("request_id", request_id)
    return merged


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id:
            line["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """The classic layout, plus ``request_id=…`` when the record belongs to a request."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None) or current_request_id()
        return f"{text} request_id={request_id}" if request_id else text


def configure_logging(level: str, log_format: str, access_log: bool) -> None:
    """Install the one stderr handler on the root logger (replacing earlier ones of ours).

    The access logger (one line per request) logs at INFO whatever ``level`` says, like a web
    server's access log, unless ``access_log`` is off. urllib3 never logs below INFO: its DEBUG
    lines quote every outbound URL, query string (and any credential in it) included.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "switchboard", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.switchboard = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO if access_log else logging.CRITICAL)
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))
