"""``/connectors`` (what is installed) and ``/jobs`` (connector action runs)."""

from __future__ import annotations

import logging
from typing import Any

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job

from app.auth.access import current_tenant_id
from app.connectors.extension import get_registry
from app.connectors.jobs import job_tenant
from app.connectors.schemas import ConnectorListSchema, ConnectorSchema, JobSchema
from app.store import jsoncodec
from app.store.redis import get_redis
from app.web.api import Blueprint
from app.web.problems import Problem

log = logging.getLogger(__name__)

blp = Blueprint("connectors", __name__, url_prefix="/api/v1", description="Connectors and jobs")


def _catalog() -> list[dict[str, Any]]:
    registry = get_registry()
    items = []
    for status in registry.statuses():
        entry = status.to_dict()
        connector = registry.get(status.name) if status.status == "loaded" else None
        if connector is not None:
            entry.update(connector.to_dict())
        items.append(entry)
    return sorted(items, key=lambda item: item["name"])


@blp.route("/connectors", methods=["GET"])
@blp.auth("integrations:read")
@blp.response(200, ConnectorListSchema)
def list_connectors() -> dict[str, Any]:
    """List installed connectors with schemas, actions, event types and load status (a plugin
    that failed to load shows its error: ``integrations:read``, like the integrations)."""
    items = _catalog()
    return {"items": items, "total": len(items)}


@blp.route("/connectors/<name>", methods=["GET"])
@blp.auth("integrations:read")
@blp.response(200, ConnectorSchema)
@blp.problem(404, "No such connector")
def get_connector(name: str) -> dict[str, Any]:
    """Describe one connector (or why its plugin failed to load)."""
    for item in _catalog():
        if item["name"] == name:
            return item
    raise Problem(404, f"No connector {name!r} is installed.")


@blp.route("/jobs/<job_id>", methods=["GET"])
@blp.auth("integrations:read")
@blp.response(200, JobSchema)
@blp.problem(404, "No such job")
@blp.problem(503, "The job store is unavailable")
def get_job(job_id: str) -> dict[str, Any]:
    """Report a job of this tenant: a connector action run (or, for operators, a tenant's
    erasure): status, result, error and attempts."""
    try:
        job = Job.fetch(job_id, connection=get_redis())
        status = job.get_status(refresh=False)
    except (NoSuchJobError, ValueError) as exc:  # ValueError: not a valid job id at all
        raise Problem(404, f"No job {job_id!r} (results are kept 7 days).") from exc
    except redis.RedisError as exc:
        raise Problem(503, "The job store is unavailable; try again shortly.") from exc
    if "action" not in job.meta or job_tenant(job.meta) != current_tenant_id():
        raise Problem(404, f"No job {job_id!r} (results are kept 7 days).")
    if status == "finished":
        result, error = _finished_result(job)
    else:
        result, error = None, job.meta.get("last_error")
    return {
        "id": job.id,
        "status": str(status.value if hasattr(status, "value") else status),
        "integration_id": job.meta.get("integration_id"),
        "action": job.meta.get("action"),
        "result": result,
        "error": error,
        "attempts": (job.number_of_retries or 0) + (0 if status in ("queued", "deferred") else 1),
        "enqueued_at": job.enqueued_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
    }


def _finished_result(job: Job) -> tuple[Any, str | None]:
    """A finished job's result, or None and why it is not shown.

    Results are checked as strict JSON when an action returns, but a job finished before that
    (or a result this process cannot unpickle) must still be answered, not turned into a 500.
    """
    try:
        result = job.return_value()
    except redis.RedisError as exc:
        raise Problem(503, "The job store is unavailable; try again shortly.") from exc
    except Exception as exc:  # noqa: BLE001 - unpickling runs whatever class was stored
        log.warning("job %s: stored result cannot be read: %r", job.id, exc)
        return None, f"the stored result cannot be read ({type(exc).__name__})"
    problem = jsoncodec.problem(result, "result")
    if problem is not None:
        return None, f"the stored result is not JSON and is not shown: {problem}"
    return result, None
