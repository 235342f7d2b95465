"""Erasing a tenant: every row it owns, its Redis state and its stream entries, then itself.

``start_erasure`` marks the tenant ``deleting`` (its keys stop at once: the auth epoch moves)
and queues :func:`erase_tenant` on the ``default`` queue. The job deletes each tenant-owned
table's rows in batches of ``SWITCHBOARD_RETENTION_BATCH_SIZE``, one short transaction each,
children before parents, so a large tenant never holds long locks; it is idempotent, so a
retry (or the workers' retention pass, which finishes any tenant left ``deleting``) resumes
where it stopped. Encrypted secrets go with their rows (webhook secrets, connector configs,
OAuth tokens). When nothing is left, the tenant row goes, ``tenant.deleted`` is audited and
emitted in the default tenant (the operator's), where operators' webhooks receive it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from flask import Flask, current_app
from rq import Retry

from app.audit import record_audit
from app.auth.access import bump_auth_epoch
from app.events.catalog import emit_event
from app.limits.usage import forget_tenant
from app.logs.structured import job_meta
from app.store.db import database
from app.store.models import DEFAULT_TENANT_ID, TENANT_OWNED, Tenant, TenantOwned, utcnow
from app.store.outage import WORKER_SURVIVES, describe
from app.store.queues import get_queue
from app.store.redis import get_redis
from app.stream.publish import delete_entries

log = logging.getLogger(__name__)

ERASURE_JOB_TIMEOUT = 3600


def start_erasure(tenant: Tenant, operator_tenant_id: str) -> str:
    """Mark ``tenant`` deleting and queue its erasure; return the job id (to poll at
    ``/jobs/{id}`` acting in ``operator_tenant_id``). Call inside a transaction."""
    tenant.status = "deleting"
    tenant.updated_at = utcnow()
    tenant.save()
    bump_auth_epoch(required=True)  # its keys stop now, everywhere
    job_id = f"erase-{tenant.id}"
    database.after_commit(lambda: _enqueue(job_id, tenant.id, operator_tenant_id))
    return job_id


def _enqueue(job_id: str, tenant_id: str, operator_tenant_id: str) -> None:
    try:
        get_queue("default").enqueue(
            erase_tenant,
            tenant_id,
            job_id=job_id,
            job_timeout=ERASURE_JOB_TIMEOUT,
            retry=Retry(max=5, interval=[10, 30, 60, 300, 600]),
            result_ttl=7 * 86400,
            failure_ttl=7 * 86400,
            description=f"erase_tenant({tenant_id!r})",
            meta=job_meta(
                {"tenant_id": operator_tenant_id, "action": "tenant.erase", "erased": tenant_id}
            ),
        )
    except redis.RedisError as exc:  # the retention pass finishes it
        log.warning(
            "could not queue the erasure of %s (%s); retention will finish it", tenant_id, exc
        )


def erase_tenant(tenant_id: str) -> dict[str, Any]:
    """RQ job: delete everything ``tenant_id`` owns, then the tenant; return rows per table."""
    with database.connection_context():
        return erase(tenant_id)


def erase(tenant_id: str) -> dict[str, Any]:
    """Erase a tenant marked ``deleting`` (anything else is left alone); rows deleted by table."""
    tenant = Tenant.get_or_none(Tenant.id == tenant_id)
    if tenant is None or tenant.status != "deleting" or tenant.id == DEFAULT_TENANT_ID:
        return {"erased": False}
    batch = int(current_app.config["RETENTION_BATCH_SIZE"])
    deleted = {
        model._meta.table_name: _erase_table(model, tenant_id, batch) for model in TENANT_OWNED
    }
    _erase_redis(tenant_id)
    with database.atomic():
        Tenant.delete().where(Tenant.id == tenant_id).execute()
        summary = {
            "tenant_id": tenant.id,
            "external_id": tenant.external_id,
            "name": tenant.name,
            "rows": deleted,
        }
        record_audit("tenant.deleted", "tenant", tenant.id, summary, tenant_id=DEFAULT_TENANT_ID)
        emit_event("tenant.deleted", summary, tenant_id=DEFAULT_TENANT_ID)
    bump_auth_epoch()
    log.info("tenant %s erased: %s", tenant_id, deleted)
    return {"erased": True, "rows": deleted}


def _erase_table(model: type[TenantOwned], tenant_id: str, batch: int) -> int:
    key: Any = model._meta.primary_key
    total = 0
    while True:
        chunk = model.of(tenant_id, key).limit(batch)
        with database.atomic():
            count = int(model.delete_of(tenant_id).where(key.in_(chunk)).execute())
        total += count
        if count < batch:
            return total


def _erase_redis(tenant_id: str) -> None:
    """The tenant's usage counters and its entries in the live stream."""
    client = get_redis()
    forget_tenant(client, tenant_id)
    delete_entries(client, lambda fields: fields.get("t") == tenant_id)


def finish_erasures() -> list[str]:
    """Erase every tenant left ``deleting`` (a lost or failed job); return their ids."""
    stuck = [row.id for row in Tenant.select(Tenant.id).where(Tenant.status == "deleting")]
    for tenant_id in stuck:
        erase(tenant_id)
    return stuck


FINISH_LOCK = "sb:tenants:erasure-lock"


def start_erasure_finisher(app: Flask) -> threading.Thread:
    """A worker thread finishing erasures whose job was lost, every ``RETENTION_INTERVAL``."""
    interval = float(app.config["RETENTION_INTERVAL"])

    def loop() -> None:
        stop = threading.Event()  # never set: the thread ends with the process
        while not stop.wait(interval):
            with app.app_context():
                try:
                    if get_redis().set(FINISH_LOCK, "1", nx=True, px=max(1, int(interval * 800))):
                        with database.connection_context():
                            finish_erasures()
                except WORKER_SURVIVES as exc:
                    log.warning("finishing erasures failed: %s", describe(exc))
                except Exception:  # noqa: BLE001 - the thread must outlive any failure
                    log.exception("finishing erasures failed; next pass in %g s", interval)

    thread = threading.Thread(target=loop, name="erasure-finisher", daemon=True)
    thread.start()
    return thread
