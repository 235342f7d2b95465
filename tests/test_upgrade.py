"""Upgrading a database of the release before tenants: every old key, webhook and pending
delivery still works, through the real ``flask db upgrade``, gunicorn and a worker.

The databases in ``tests/fixtures/release_0_1`` were made by that release's own code (see its
README); SQLite always, PostgreSQL when the suite runs on it.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import standardwebhooks

from app.store import migrations
from app.store.db import open_database
from tests.peers import GunicornServer, Receiver, WorkerProcess
from tests.test_cli import run_flask

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "release_0_1"
TIMEOUT = 30


def _sqlite_copy(tmp_path: Path) -> str:
    path = tmp_path / "release_0_1.db"
    with sqlite3.connect(path) as db:
        db.executescript((FIXTURES / "sqlite.sql").read_text())
    return f"sqlite:///{path}"


def _postgres_copy(url: str) -> str:
    import psycopg2
    from psycopg2 import sql

    parts = urlsplit(url)
    name = f"{parts.path.strip('/')}_upgrade"  # one per suite worker
    admin = psycopg2.connect(url.replace(parts.path, "/postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    admin.close()
    target = parts._replace(path=f"/{name}").geturl()
    conn = psycopg2.connect(target)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute((FIXTURES / "postgresql.sql").read_text())
    conn.close()
    return target


def _recorded_migrations(url: str) -> list[str]:
    database = open_database(url)
    try:
        rows = database.execute_sql("SELECT version FROM schema_migrations ORDER BY version")
        return [row[0] for row in rows]
    finally:
        database.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def old_database(request: Any, app: Any, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """A copy of the old release's database (its URL) and what its fixture knows of it."""
    if request.param == "sqlite":
        url = _sqlite_copy(tmp_path)
    elif app.config["DATABASE_URL"].startswith("postgres"):
        url = _postgres_copy(app.config["DATABASE_URL"])
    else:
        pytest.skip("PostgreSQL: runs when the suite runs on it (DATABASE_URL)")
    return url, json.loads((FIXTURES / f"{request.param}.json").read_text())


def test_an_upgraded_database_keeps_every_key_webhook_and_pending_delivery(
    app: Any, old_database: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    url, known = old_database
    upgraded = run_flask(app, "db", "upgrade", database_url=url)
    assert "0009_tenants" in upgraded.stdout
    # Migrations the old release recorded under names with internal ids keep counting as
    # applied, now under the names they have today: nothing was applied twice.
    since_release = [name for name, _ in migrations.MIGRATIONS[8:]]  # 0009_tenants on
    assert upgraded.stdout.strip() == "applied: " + ", ".join(since_release)
    assert _recorded_migrations(url) == [name for name, _ in migrations.MIGRATIONS]
    server = GunicornServer(app, tmp_path / "gunicorn.log", DATABASE_URL=url)
    base = server.start() + "/api/v1"
    receiver = Receiver()
    worker = None
    try:

        def call(method: str, path: str, key: str, **kw: Any) -> requests.Response:
            headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
            return requests.request(method, base + path, headers=headers, timeout=TIMEOUT, **kw)

        # The old admin's key is now an operator's platform key, at home in the default tenant.
        admin = call("GET", "/auth/whoami", known["admin_key"]).json()
        assert admin["platform"] is True and admin["tenant"]["external_id"] == "default"
        assert admin["owner"]["platform_admin"] is True and admin["owner"]["role"] == "admin"
        # The member's key is a key of the default tenant, with the member role's scopes.
        member = call("GET", "/auth/whoami", known["member_key"]).json()
        assert member["platform"] is False and member["tenant"]["id"] == admin["tenant"]["id"]
        assert member["owner"]["role"] == "member"
        assert set(member["scopes"]) == {"events:write", "webhooks:read"}

        key = known["admin_key"]
        hooks = call("GET", "/webhooks", key).json()["items"]
        assert [hook["id"] for hook in hooks] == [known["webhook_id"]]
        types = {t["name"]: t["source"] for t in call("GET", "/event-types", key).json()["items"]}
        assert types["order.paid"] == "custom"
        rules = call("GET", "/alert-rules", key).json()["items"]
        assert [rule["id"] for rule in rules] == [known["alert_rule_id"]]
        audit = call("GET", "/audit-log", key).json()["items"]
        assert {"integration.created", "webhook.created"} <= {entry["action"] for entry in audit}

        # The three deliveries left pending by the old release go out, signed with the old
        # secret, once the webhook points at a live receiver.
        moved = call("PATCH", f"/webhooks/{known['webhook_id']}", key, json={"url": receiver.url})
        assert moved.status_code == 200, moved.text
        worker = WorkerProcess(app, DATABASE_URL=url)
        got = receiver.wait_for(lambda r: len(r) >= 3, timeout=60)
        assert sorted(r.headers["webhook-id"] for r in got) == sorted(known["events"])
        verifier = standardwebhooks.Webhook(known["webhook_secret"])
        for delivered in got:
            verifier.verify(delivered.body, delivered.headers)

        # And the upgraded installation works as a new one: the member publishes, the
        # operator creates a tenant.
        published = call(
            "POST", "/events", known["member_key"], json={"type": "order.paid", "data": {"n": 9}}
        )
        assert published.status_code == 202, published.text
        got = receiver.wait_for(lambda r: len(r) >= 4, timeout=60)
        assert got[-1].headers["webhook-id"] == published.json()["id"]
        created = call("POST", "/tenants", key, json={"name": "Acme", "external_id": "acme"})
        assert created.status_code == 201, created.text
    finally:
        if worker is not None:
            worker.stop()
        receiver.close()
        server.stop()
