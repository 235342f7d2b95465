"""``/health`` (liveness) and ``/ready`` (database and Redis reachable)."""

from __future__ import annotations

import logging
from typing import Any

import marshmallow as ma
import redis

from app.store.db import database
from app.store.redis import get_redis
from app.web.api import Blueprint
from app.web.problems import Problem

log = logging.getLogger(__name__)

blp = Blueprint("health", __name__, url_prefix="/api/v1", description="Health checks")


class HealthSchema(ma.Schema):
    status = ma.fields.String()
    checks = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())


@blp.route("/health", methods=["GET"])
@blp.response(200, HealthSchema)
def health() -> dict[str, Any]:
    """Liveness: the process answers (no auth, no dependencies)."""
    return {"status": "ok"}


@blp.route("/ready", methods=["GET"])
@blp.response(200, HealthSchema)
@blp.problem(503, "The database or Redis is unreachable")
def ready() -> dict[str, Any]:
    """Readiness: the database and Redis both answer."""
    checks = {"database": "ok", "redis": "ok"}
    try:
        database.execute_sql("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any driver error means "not ready"
        log.warning("readiness: database check failed: %s", exc)
        checks["database"] = "unavailable"
    try:
        get_redis().ping()
    except redis.RedisError as exc:
        log.warning("readiness: redis check failed: %s", exc)
        checks["redis"] = "unavailable"
    if any(v != "ok" for v in checks.values()):
        raise Problem(
            503, "Not ready: " + ", ".join(k for k, v in checks.items() if v != "ok"), checks=checks
        )
    return {"status": "ok", "checks": checks}
