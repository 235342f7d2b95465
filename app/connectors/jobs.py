"""RQ jobs on queue ``connectors``: run one connector action for an integration."""

from __future__ import annotations

import math
from typing import Any

from flask import current_app
from rq import Retry, get_current_job

from app.connectors.runtime import execute_action
from app.logs.structured import job_meta
from app.store.db import database
from app.store.models import DEFAULT_TENANT_ID, Integration
from app.store.queues import get_queue
from app.stream import kinds
from app.webhooks.backoff import retry_delay

ACTION_MAX_RETRIES = 3
ACTION_JOB_TIMEOUT = 120


class ActionFailed(Exception):
    """The action failed for good (not retryable, or out of retries)."""


def enqueue_action(
    tenant_id: str, integration_id: str, action: str, action_input: dict[str, Any]
) -> str:
    """Queue an action run of the tenant's integration and return the job id."""
    job = get_queue("connectors").enqueue(
        run_action,
        integration_id,
        action,
        action_input,
        tenant_id,
        job_timeout=ACTION_JOB_TIMEOUT,
        result_ttl=7 * 86400,
        failure_ttl=7 * 86400,
        # RQ's default description repeats the arguments and is logged: no input in it.
        description=f"run_action({integration_id!r}, {action!r})",
        meta=job_meta({"integration_id": integration_id, "action": action, "tenant_id": tenant_id}),
    )
    kinds.job_state_changed(tenant_id, str(job.id), integration_id, action, "queued")
    return str(job.id)


def job_tenant(meta: dict[str, Any]) -> str:
    """The tenant a job's ``meta`` says it runs in (jobs queued before tenants: the default)."""
    return str(meta.get("tenant_id") or DEFAULT_TENANT_ID)


def run_action(
    integration_id: str,
    action: str,
    action_input: dict[str, Any],
    tenant_id: str = DEFAULT_TENANT_ID,  # jobs queued before tenants ran in what is now default
) -> Any:
    """Run the action; a retryable failure returns ``rq.Retry`` (honouring ``Retry-After``)."""
    job = get_current_job()
    retries_done = (job.number_of_retries or 0) if job else 0
    job_id = job.id if job else None

    def announce(state: str, error: str | None = None) -> None:
        if job_id is not None:  # None: called directly, not as a job
            kinds.job_state_changed(tenant_id, job_id, integration_id, action, state, error)

    with database.connection_context():
        integration = Integration.get_of(tenant_id, Integration.id == integration_id)
        if integration is None:
            raise ActionFailed(f"integration {integration_id} no longer exists")
        if integration.status == "inactive":  # switched off after the run was queued
            raise ActionFailed(f"integration {integration_id} is inactive")
        can_retry = retries_done < ACTION_MAX_RETRIES
        announce("started")
        outcome = execute_action(
            integration,
            action,
            action_input,
            log_data={"job_id": job.id if job else None, "attempt": retries_done + 1},
            will_retry=can_retry,
        )
    if outcome.success:
        announce("finished")
        return outcome.result
    if job is not None:
        job.meta["last_error"] = outcome.error
        job.save_meta()
    if outcome.retryable and can_retry:
        schedule = current_app.config["WEBHOOK_RETRY_SCHEDULE"]
        delay = outcome.retry_after or retry_delay(schedule, retries_done + 1)
        announce("retrying", outcome.error)
        # RQ schedules in whole seconds, rounding the time down: one second more makes the
        # wait at least ``delay`` (a Retry-After is a minimum).
        return Retry(max=ACTION_MAX_RETRIES, interval=math.ceil(delay) + 1)
    announce("failed", outcome.error)
    raise ActionFailed(outcome.error or "action failed")
