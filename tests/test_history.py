"""Scale of history: cursor pagination of the history lists, and retention of old rows."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from app.store.db import database
from app.store.models import (
    DEFAULT_TENANT_ID,
    AuditLog,
    Delivery,
    DeliveryAttempt,
    Event,
    IntegrationLog,
    utcnow,
)
from app.store.retention import prune_batch
from tests.peers import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
FLASK = Path(sys.executable).parent / "flask"


def _page_through(api: Any, url: str, limit: int, between: Any = None) -> list[dict]:
    """Follow ``next_cursor`` to the end, calling ``between()`` after every page."""
    seen: list[dict] = []
    sep = "&" if "?" in url else "?"
    page = api.get(f"{url}{sep}limit={limit}")
    while True:
        assert page.status_code == 200, page.json
        seen += page.json["items"]
        assert "total" not in page.json  # counting is opt-in
        cursor = page.json["next_cursor"]
        assert page.json["has_more"] is (cursor is not None)
        if cursor is None:
            assert "Link" not in page.headers
            return seen
        link = page.headers["Link"]
        assert link.startswith("<") and link.endswith('>; rel="next"') and cursor in link
        if between:
            between()
        page = api.get(link[1 : link.index(">")])


def _logs(app: Any, count: int, **fields: Any) -> list[int]:
    with app.app_context(), database.connection_context():
        return [
            IntegrationLog.create(
                tenant_id=DEFAULT_TENANT_ID,
                event_type="test",
                status="success",
                event_data={},
                **fields,
            ).id
            for _ in range(count)
        ]


def test_log_cursor_sees_every_row_once_while_rows_arrive(app, api):
    ids = _logs(app, 23)
    items = _page_through(api, "/api/v1/logs", 5, between=lambda: _logs(app, 2))
    assert [item["id"] for item in items] == sorted(ids, reverse=True)
    counted = api.get("/api/v1/logs?count=true&limit=1").json
    assert counted["total"] == 23 + 2 * 4 and counted["has_more"]


def test_delivery_cursor_with_equal_timestamps(app, api, integration, receiver):
    assert api.post("/api/v1/event-types", json={"name": "order.paid"}).status_code == 201
    res = api.post(
        "/api/v1/webhooks",
        json={"url": receiver.url, "events": ["order.*"], "integration_id": integration["id"]},
    )
    assert res.status_code == 201, res.json
    hook = res.json

    def publish(n: int) -> None:
        for i in range(n):
            res = api.post("/api/v1/events", json={"type": "order.paid", "data": {"i": i}})
            assert res.status_code == 202, res.json

    publish(12)
    with app.app_context(), database.connection_context():
        rows = list(Delivery.select().where(Delivery.webhook == hook["id"]))
        tie = utcnow() - timedelta(minutes=1)  # several rows share one created_at
        Delivery.update(created_at=tie).where(Delivery.id.in_([r.id for r in rows[:6]])).execute()
        expected = {r.id for r in rows}
    url = f"/api/v1/webhooks/{hook['id']}/deliveries"
    items = _page_through(api, url, 4, between=lambda: publish(1))
    assert len(items) == len(expected) and {item["id"] for item in items} == expected
    stamps = [(item["created_at"], item["id"]) for item in items]
    assert stamps == sorted(stamps, reverse=True)
    filtered = api.get(f"{url}?status=pending&count=true").json
    assert filtered["total"] == 12 + 2  # one published after each of the first two pages


def test_events_and_audit_log_pages(app, api):
    for n in range(7):
        assert api.post("/api/v1/event-types", json={"name": f"thing{n}.made"}).status_code == 201
        api.post("/api/v1/events", json={"type": f"thing{n}.made", "data": {"n": n}})
    events = _page_through(api, "/api/v1/events", 3)
    ours = [e["data"]["n"] for e in events if e["type"].startswith("thing")]
    assert ours == list(reversed(range(7)))
    assert [e["type"] for e in _page_through(api, "/api/v1/events?type=thing3.made", 3)] == [
        "thing3.made"
    ]
    audit = _page_through(api, "/api/v1/audit-log?action=event_type.created", 2)
    assert [a["resource_id"] for a in audit] == [f"thing{n}.made" for n in reversed(range(7))]


def test_events_list_shows_only_what_the_key_may_read(app, api, admin_user, integration):
    """Like the live stream: someone else's keys, integrations and alerts stay hidden."""
    from tests.conftest import ApiClient, make_key

    assert api.post("/api/v1/api-keys", json={"name": "k", "permissions": []}).status_code == 201
    seen = {e["type"].split(".")[0] for e in _page_through(api, "/api/v1/events", 50)}
    assert {"api_key", "integration"} <= seen  # the admin sees them all
    hooks_only = ApiClient(app.test_client(), make_key(app, admin_user, ["webhooks:read"]))
    types = {e["type"] for e in _page_through(hooks_only, "/api/v1/events", 50)}
    assert not any(t.startswith(("api_key.", "integration.", "alert.")) for t in types), types
    both = ApiClient(
        app.test_client(), make_key(app, admin_user, ["webhooks:read", "integrations:read"])
    )
    types = {e["type"] for e in _page_through(both, "/api/v1/events", 50)}
    assert any(t.startswith("integration.") for t in types)
    assert not any(t.startswith("api_key.") for t in types)


def _cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "query",
    [
        "cursor=%%%",
        "cursor=bm90IGpzb24",  # base64 of "not json"
        f"cursor={_cursor('audit-log', 5)}",  # another list's cursor
        f"cursor={_cursor('logs', '5')}",
        f"cursor={_cursor('logs', True)}",
        f"cursor={_cursor('logs', 2**70)}",
        f"cursor={_cursor('logs', 1, 2)}",
        f"cursor={_cursor('logs', 1)}&offset=3",
        "count=maybe",
    ],
)
def test_bad_cursor_is_a_problem(api, query):
    res = api.get(f"/api/v1/logs?{query}")
    assert res.status_code == 422, res.json
    assert res.content_type == "application/problem+json"
    assert set(res.json["errors"]) & {"cursor", "offset", "count"}


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor("deliveries", "2026-01-01T00:00:00+00:00", "dlv_x"),
        _cursor("deliveries", "yesterday", "dlv_x"),
        _cursor("deliveries", "2026-01-01T00:00:00", "dlv_\u0000"),
        _cursor("deliveries", "2026-01-01T00:00:00", 7),
    ],
)
def test_bad_delivery_cursor_is_a_problem(api, integration, receiver, cursor):
    hook = api.post(
        "/api/v1/webhooks",
        json={"url": receiver.url, "events": ["*"], "integration_id": integration["id"]},
    ).json
    res = api.get(f"/api/v1/webhooks/{hook['id']}/deliveries?cursor={cursor}")
    assert res.status_code == 422 and res.json["errors"] == {"cursor": ["invalid cursor"]}


def _old_history(app: Any, integration_id: str, webhook_id: str, days: int) -> dict[str, Any]:
    """Rows of every kind created ``days`` ago, plus the deliveries retention must keep."""
    then = utcnow() - timedelta(days=days)
    ours = {"tenant_id": DEFAULT_TENANT_ID}
    with app.app_context(), database.connection_context():
        done = [Event.create(type="order.paid", created_at=then, **ours) for _ in range(5)]
        delivered = [
            Delivery.create(
                event=event, webhook=webhook_id, status=status, attempts=1, created_at=then, **ours
            )
            for event, status in zip(done, ["succeeded", "failed"] * 2 + ["failed"], strict=True)
        ]
        for delivery in delivered:
            DeliveryAttempt.create(delivery=delivery, attempt=1, status_code=500, **ours)
        waiting = Event.create(type="order.paid", created_at=then, **ours)
        pending = Delivery.create(event=waiting, webhook=webhook_id, created_at=then, **ours)
        held = Delivery.create(
            event=waiting, webhook=webhook_id, status="held", created_at=then, **ours
        )
        leased = Delivery.create(
            **ours,
            event=waiting,
            webhook=webhook_id,
            status="failed",
            created_at=then,
            lease_until=utcnow() + timedelta(minutes=5),
        )
        for _ in range(5):
            IntegrationLog.create(
                integration_id=integration_id,
                event_type="t",
                status="success",
                created_at=then,
                **ours,
            )
            AuditLog.create(action="x.y", resource_type="x", created_at=then, **ours)
    return {"waiting": waiting.id, "kept": {pending.id, held.id, leased.id}}


def _counts(app: Any) -> dict[str, int]:
    with app.app_context(), database.connection_context():
        return {
            model.__name__: model.select().count()
            for model in (Event, Delivery, DeliveryAttempt, IntegrationLog, AuditLog)
        }


def test_retention_prunes_in_batches_and_keeps_pending_and_held(app, api, integration, receiver):
    hook = api.post(
        "/api/v1/webhooks",
        json={"url": receiver.url, "events": ["*"], "integration_id": integration["id"]},
    ).json
    old = _old_history(app, integration["id"], hook["id"], days=40)
    recent = _old_history(app, integration["id"], hook["id"], days=2)
    before = _counts(app)
    with app.app_context(), database.connection_context():
        cutoff = utcnow() - timedelta(days=30)
        assert prune_batch("logs", cutoff, 2) == 2  # one batch is one bounded transaction
    env = dict(
        os.environ,
        DATABASE_URL=app.config["DATABASE_URL"],
        REDIS_URL=app.config["REDIS_URL"],
        SWITCHBOARD_SECRET_KEYS=",".join(app.config["SECRET_KEYS"]),
        SWITCHBOARD_RETENTION_BATCH_SIZE="2",
        SWITCHBOARD_RETENTION_DAYS_AUDIT="30",
    )
    out = subprocess.run(
        [str(FLASK), "--app", "app", "retention", "run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "deliveries: 5 deleted" in out and "events: 5 deleted" in out
    assert "logs: 3 deleted" in out and "audit: 5 deleted" in out
    after = _counts(app)
    # The old event with a pending, a held and a leased delivery stays, and so do they.
    assert after == {
        "Event": before["Event"] - 5,
        "Delivery": before["Delivery"] - 5,
        "DeliveryAttempt": before["DeliveryAttempt"] - 5,
        "IntegrationLog": before["IntegrationLog"] - 5,
        "AuditLog": before["AuditLog"] - 5,
    }
    with app.app_context(), database.connection_context():
        assert {d.id for d in Delivery.select().where(Delivery.event == old["waiting"])} == old[
            "kept"
        ]
        assert Event.get_or_none(Event.id == recent["waiting"]) is not None
    bad = subprocess.run(
        [str(FLASK), "--app", "app", "retention", "run"],
        cwd=ROOT,
        env={**env, "SWITCHBOARD_RETENTION_DAYS_LOGS": "-1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "SWITCHBOARD_RETENTION_DAYS_LOGS" in bad.stderr


def test_worker_prunes_periodically(app, api, integration):
    _logs(app, 3, integration_id=integration["id"])
    with app.app_context(), database.connection_context():
        IntegrationLog.update(created_at=utcnow() - timedelta(days=31)).execute()
    fresh = _logs(app, 1, integration_id=integration["id"])
    worker = WorkerProcess(app, SWITCHBOARD_RETENTION_INTERVAL="0.5")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            items = api.get("/api/v1/logs").json["items"]
            if len(items) == 1:
                break
            time.sleep(0.2)
        assert [item["id"] for item in items] == fresh
    finally:
        worker.stop()
