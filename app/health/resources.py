"""``/health`` (liveness) and ``/ready`` (database and Redis reachable, a worker live).

Both answer without a key: probes and load balancers read the status code. Which hosts and
processes run the workers (``name``, ``pid``, ``host``) is shown only to an operator (a
platform key with ``admin``): the infrastructure of every tenant is no one else's business.
"""

from __future__ import annotations

import logging
from typing import Any

import marshmallow as ma
import redis
from flask import current_app

from app.auth.access import authenticate, presented_key
from app.events.progress import dispatch_progress
from app.store.db import database
from app.store.models import Delivery, utcnow
from app.store.redis import get_redis
from app.web.api import PROBLEM_CONTENT_TYPE, Blueprint, ProblemSchema
from app.web.problems import Problem
from app.workers.liveness import live_workers

log = logging.getLogger(__name__)

blp = Blueprint("health", __name__, url_prefix="/api/v1", description="Health checks")


class HealthSchema(ma.Schema):
    status = ma.fields.String()
    checks = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())


_OPERATORS_ONLY = {"description": "Shown to an operator's platform key with `admin` only"}
#: What anyone may see of a live worker.
PUBLIC_WORKER_FIELDS = ("state", "started_at", "last_heartbeat_age")


class WorkerSchema(ma.Schema):
    name = ma.fields.String(metadata=_OPERATORS_ONLY)
    pid = ma.fields.Integer(metadata=_OPERATORS_ONLY)
    host = ma.fields.String(metadata=_OPERATORS_ONLY)
    state = ma.fields.String(metadata={"description": "starting, working or reconnecting"})
    started_at = ma.fields.String()
    last_heartbeat_age = ma.fields.Float(metadata={"description": "seconds"})


class ReadySchema(HealthSchema):
    workers = ma.fields.List(
        ma.fields.Nested(WorkerSchema),
        metadata={"description": "Workers that heartbeated within WORKER_STALE_AFTER seconds"},
    )
    oldest_due_delivery_age = ma.fields.Float(
        allow_none=True,
        metadata={"description": "Seconds the oldest due, undelivered delivery has waited"},
    )
    dispatch = ma.fields.Nested(lambda: DispatchSchema())


class DispatchSchema(ma.Schema):
    last_claim_age = ma.fields.Float(
        allow_none=True,
        metadata={"description": "Seconds since a dispatcher last looked for due deliveries"},
    )
    oldest_unclaimed_age = ma.fields.Float(
        allow_none=True,
        metadata={"description": "Seconds the oldest due delivery that no worker holds has waited"},
    )


@blp.route("/health", methods=["GET"])
@blp.response(200, HealthSchema)
def health() -> dict[str, Any]:
    """Liveness: the process answers (no auth, no dependencies)."""
    return {"status": "ok"}


class NotReadySchema(ProblemSchema):
    checks = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())
    workers = ma.fields.List(ma.fields.Nested(WorkerSchema))
    oldest_due_delivery_age = ma.fields.Float(allow_none=True)
    dispatch = ma.fields.Nested(DispatchSchema)


@blp.route("/ready", methods=["GET"])
@blp.response(200, ReadySchema)
@blp.alt_response(
    503,
    schema=NotReadySchema,
    content_type=PROBLEM_CONTENT_TYPE,
    description="The database or Redis is unreachable, no worker is live, or due deliveries "
    "are not being claimed although workers are live (`checks.dispatch: stalled`)",
)
def ready() -> dict[str, Any]:
    """Readiness: the stores answer, a worker heartbeated recently, and due work is claimed.

    No key needed. The workers' names, pids and hosts are shown to an operator's platform key
    with the `admin` scope only.
    """
    checks = {"database": "ok", "redis": "ok", "workers": "ok", "dispatch": "ok"}
    report: dict[str, Any] = {"workers": [], "oldest_due_delivery_age": None}
    try:
        database.execute_sql("SELECT 1")
        report["oldest_due_delivery_age"] = _oldest_due_age()
    except Exception as exc:  # noqa: BLE001 - any driver error means "not ready"
        log.warning("readiness: database check failed: %s", exc)
        checks["database"] = "unavailable"
    try:
        client = get_redis()
        client.ping()
        report["workers"] = live_workers(client, current_app.config["WORKER_STALE_AFTER"])
    except redis.RedisError as exc:
        log.warning("readiness: redis check failed: %s", exc)
        checks["redis"] = checks["workers"] = "unavailable"
    if checks["redis"] == "ok" and not report["workers"]:
        checks["workers"] = "none live"
    checks["dispatch"] = _dispatch_check(checks, report)
    if not _operator_asks():
        report["workers"] = [
            {k: v for k, v in worker.items() if k in PUBLIC_WORKER_FIELDS}
            for worker in report["workers"]
        ]
    failing = [k for k, v in checks.items() if v not in ("ok", "unknown")]
    if not current_app.config["READY_REQUIRES_WORKER"] and checks["workers"] == "none live":
        failing.remove("workers")
    if failing:
        raise Problem(503, "Not ready: " + ", ".join(failing), checks=checks, **report)
    return {"status": "ok", "checks": checks, **report}


def _dispatch_check(checks: dict[str, str], report: dict[str, Any]) -> str:
    """``stalled`` when live workers leave due deliveries unclaimed (see app.events.progress)."""
    if checks["database"] != "ok" or checks["redis"] != "ok":
        return "unknown"
    try:
        seen = dispatch_progress()
    except Exception as exc:  # noqa: BLE001 - a store failing now is reported by its own check
        log.warning("readiness: dispatch check failed: %s", exc)
        return "unknown"
    report["dispatch"] = {
        "last_claim_age": _rounded(seen.last_claim_age),
        "oldest_unclaimed_age": _rounded(seen.oldest_unclaimed_age),
    }
    if report["workers"] and seen.stalled(current_app.config["DISPATCH_STALL_AFTER"]):
        return "stalled"
    return "ok"


def _operator_asks() -> bool:
    """True when the request carries an operator's admin key (any other key, or a key that
    fails, gets the public answer: the probe's status never depends on a key)."""
    if not presented_key():
        return False
    try:
        principal = authenticate()
    except Exception:  # noqa: BLE001 - a bad key or a store down: the public answer
        return False
    return principal.platform and principal.is_admin


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


def _oldest_due_age() -> float | None:
    """Seconds the oldest pending delivery has been due, or None when none is due."""
    now = utcnow()
    oldest = (
        Delivery.select(Delivery.next_attempt_at)
        .where((Delivery.status == "pending") & (Delivery.next_attempt_at <= now))
        .order_by(Delivery.next_attempt_at)
        .first()
    )
    return None if oldest is None else round((now - oldest.next_attempt_at).total_seconds(), 1)
