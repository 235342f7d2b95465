"""Event routes cached per process (app/events/routes.py) are never stale.

Each process keeps which webhooks and subscriptions an event type goes to, checked on every
publish against a version that database triggers change with every routing change. Changes
here come from another process (a plain database client in a subprocess, bypassing the app), so
only the triggers can tell this process about them; the next publish must see each at once.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import app.events.routes as routes
from app.events.catalog import emit_event
from app.store.db import database
from app.store.models import DEFAULT_TENANT_ID, Delivery, Webhook


def _hook(api: Any, integration: dict[str, Any], events: list[str]) -> str:
    api.post("/api/v1/event-types", json={"name": "order.paid", "description": "paid"})
    body = {"url": "http://127.0.0.1:9/hook", "events": events, "integration_id": integration["id"]}
    res = api.post("/api/v1/webhooks", json=body)
    assert res.status_code == 201, res.json
    return str(res.json["id"])


def _publish(api: Any) -> dict[str, str]:
    """Publish order.paid; return {target id: delivery status} of its deliveries."""
    res = api.post("/api/v1/events", json={"type": "order.paid", "data": {}})
    assert res.status_code == 202, res.json
    rows = Delivery.select().where(Delivery.event == res.json["id"])
    found = {row.webhook_id or row.integration_id: row.status for row in rows}
    assert res.json["deliveries"] == len(found)
    return found


_SCRIPT = """
import sys
from app.store.models import DEFAULT_TENANT_ID
url, statement = sys.argv[1], sys.argv[2]
if url.startswith("sqlite"):
    import sqlite3
    conn = sqlite3.connect(url.split("sqlite:///", 1)[1], timeout=10)
else:
    import psycopg2
    conn = psycopg2.connect(url)
conn.cursor().execute(statement)
conn.commit()
conn.close()
"""


def _in_another_process(app: Any, statement: str) -> None:
    """Run one SQL statement from a separate process with its own plain connection."""
    subprocess.run(
        [sys.executable, "-c", _SCRIPT, app.config["DATABASE_URL"], statement], check=True
    )


def _copy_webhook(source_id: str, new_id: str, events: str) -> str:
    columns = [f.column_name for f in Webhook._meta.sorted_fields]
    values = [
        {"id": f"'{new_id}'", "events": f"'{events}'"}.get(column, column) for column in columns
    ]
    return (
        f"INSERT INTO webhooks ({', '.join(columns)}) "
        f"SELECT {', '.join(values)} FROM webhooks WHERE id = '{source_id}'"
    )


def test_routing_changes_in_another_process_reach_the_next_publish(
    app: Any, api: Any, integration: dict[str, Any]
) -> None:
    hook = _hook(api, integration, ["order.paid"])
    with app.app_context():
        assert _publish(api) == {hook: "pending"}  # routes now cached in this process

        _in_another_process(app, _copy_webhook(hook, "wh_other", '["order.*"]'))
        assert _publish(api) == {hook: "pending", "wh_other": "pending"}

        _in_another_process(app, "UPDATE webhooks SET status = 'disabled' WHERE id = 'wh_other'")
        assert _publish(api) == {hook: "pending", "wh_other": "held"}

        _in_another_process(app, "UPDATE webhooks SET events = '[\"x.*\"]' WHERE id = 'wh_other'")
        assert _publish(api) == {hook: "pending"}

        _in_another_process(app, "UPDATE webhooks SET events = '[\"*\"]' WHERE id = 'wh_other'")
        assert _publish(api) == {hook: "pending", "wh_other": "held"}

        _in_another_process(app, "DELETE FROM webhooks WHERE id = 'wh_other'")
        assert _publish(api) == {hook: "pending"}

        _in_another_process(app, f"UPDATE webhooks SET retry_count = 7 WHERE id = '{hook}'")
        res = api.post("/api/v1/events", json={"type": "order.paid", "data": {}})
        assert Delivery.get(Delivery.event == res.json["id"]).max_attempts == 8


def test_subscription_changes_in_another_process_reach_the_next_publish(
    app: Any, api: Any, integration: dict[str, Any]
) -> None:
    hook = _hook(api, integration, ["order.paid"])
    subscriptions = '[{"events": ["order.*"], "action": "noop", "input": {}}]'
    with app.app_context():
        assert _publish(api) == {hook: "pending"}
        _in_another_process(
            app,
            f"UPDATE integrations SET subscriptions = '{subscriptions}'"
            f" WHERE id = '{integration['id']}'",
        )
        assert _publish(api) == {hook: "pending", integration["id"]: "pending"}
        _in_another_process(
            app, f"UPDATE integrations SET status = 'inactive' WHERE id = '{integration['id']}'"
        )
        assert _publish(api) == {hook: "pending"}


def test_unchanged_routes_are_read_once(
    app: Any, api: Any, integration: dict[str, Any], monkeypatch: Any
) -> None:
    hook = _hook(api, integration, ["order.paid"])
    loads: list[int] = []
    real = routes.load_routes
    monkeypatch.setattr(routes, "load_routes", lambda v: loads.append(v) or real(v))
    with app.app_context():
        for _ in range(3):
            assert _publish(api) == {hook: "pending"}
        # Delivery bookkeeping on a webhook (its failure streak) is not a routing change.
        _in_another_process(
            app, f"UPDATE webhooks SET consecutive_failures = 3 WHERE id = '{hook}'"
        )
        assert _publish(api) == {hook: "pending"}
    assert len(loads) <= 1


def test_routes_read_inside_a_rolled_back_change_are_not_reused(
    app: Any, api: Any, integration: dict[str, Any]
) -> None:
    """A transaction that changes routing, publishes (caching what it saw) and rolls back: a
    later committed change must not carry the version that cache was stored under."""
    hook = _hook(api, integration, ["order.paid"])
    with app.app_context(), database.connection_context():
        assert _publish(api) == {hook: "pending"}
        with database.atomic() as transaction:
            Webhook.update(events=["nothing.*"]).where(Webhook.id == hook).execute()
            assert emit_event("order.paid", {}, tenant_id=DEFAULT_TENANT_ID).delivery_count == 0
            transaction.rollback()
        _in_another_process(app, f"UPDATE webhooks SET retry_count = 5 WHERE id = '{hook}'")
        assert _publish(api) == {hook: "pending"}
