"""The gateway's batched log writer: rows kept through a failing database, inline when full."""

from __future__ import annotations

from typing import Any

import pytest

from app.gateway.logwriter import GatewayLogWriter
from app.store.db import database
from app.store.models import DEFAULT_TENANT_ID, IntegrationLog


def _paths(app: Any, integration_id: str) -> list[str]:
    with app.app_context(), database.connection_context():
        rows = IntegrationLog.select().where(IntegrationLog.integration_id == integration_id)
        return sorted(row.event_data["path"] for row in rows)


def _add(writer: GatewayLogWriter, integration_id: str, n: int) -> None:
    writer.add(
        tenant_id=DEFAULT_TENANT_ID,
        integration_id=integration_id,
        event_type="gateway.request",
        event_data={"path": f"/{n}"},
        status="success",
        response_time_ms=1.0,
    )


def test_rows_survive_a_failed_write(
    app: Any, integration: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = GatewayLogWriter(app, interval=3600, batch=3)
    # Only this test's flushes write: a full batch would wake the background flusher, which
    # on a busy machine could run after the table is back and write what it should keep.
    monkeypatch.setattr(writer, "_ensure_flusher", lambda: None)
    iid = integration["id"]
    try:
        with app.app_context(), database.connection_context():
            database.execute_sql("ALTER TABLE integration_logs RENAME TO integration_logs_away")
        try:
            for n in range(5):
                _add(writer, iid, n)
            writer.flush()  # the table is gone: every row stays queued
        finally:
            with app.app_context(), database.connection_context():
                database.execute_sql("ALTER TABLE integration_logs_away RENAME TO integration_logs")
        assert _paths(app, iid) == []
        writer.flush()
        assert _paths(app, iid) == [f"/{n}" for n in range(5)]
    finally:
        writer.close()


def test_a_full_queue_writes_inline(app: Any, integration: Any) -> None:
    writer = GatewayLogWriter(app, interval=3600, max_pending=2)
    iid = integration["id"]
    try:
        for n in range(3):
            _add(writer, iid, n)
        assert _paths(app, iid) == ["/2"]  # the third found the queue full
        writer.close()
        assert _paths(app, iid) == ["/0", "/1", "/2"]
    finally:
        writer.close()
