"""The ``flask --app app …`` commands: create-admin, db upgrade, openapi write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from app.store import migrations
from app.store.db import database
from app.store.models import User
from tests.conftest import make_user

ROOT = Path(__file__).resolve().parent.parent
FLASK = Path(sys.executable).parent / "flask"


def run_cli(app: Any, *args: str) -> Any:
    """Invoke a command through Flask's CLI runner against the session app."""
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def run_flask(app: Any, *args: str, database_url: str | None = None) -> Any:
    """Run the real ``flask --app app`` entry point against the session app's stores."""
    env = dict(
        os.environ,
        DATABASE_URL=database_url or app.config["DATABASE_URL"],
        REDIS_URL=app.config["REDIS_URL"],
        SWITCHBOARD_BCRYPT_ROUNDS="4",
        SWITCHBOARD_SECRET_KEYS=",".join(app.config["SECRET_KEYS"]),
    )
    return subprocess.run(
        [str(FLASK), "--app", "app", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1].strip()


def whoami(client: Any, key: str) -> Any:
    response = client.get("/api/v1/auth/whoami", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def login(client: Any, email: str, password: str) -> Any:
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


def test_create_admin_prints_a_working_admin_key(app: Any, client: Any) -> None:
    result = run_flask(app, "create-admin", "Ops@Example.com", "--password", "s3cret-pass")
    key = last_line(result.stdout)
    assert key.startswith("sb_live_")
    assert "password" not in result.stdout  # nothing generated, nothing printed

    me = whoami(client, key)
    assert me["owner"]["email"] == "ops@example.com"
    assert me["owner"]["role"] == "admin"
    assert "admin" in me["scopes"]
    assert (
        client.get("/api/v1/api-keys", headers={"Authorization": f"Bearer {key}"}).status_code
        == 200
    )

    response = login(client, "ops@example.com", "s3cret-pass")
    assert response.status_code == 201, response.get_json()
    assert "admin" in response.get_json()["scopes"]
    assert login(client, "ops@example.com", "wrong").status_code == 401


def test_create_admin_generates_and_prints_a_password(app: Any, client: Any) -> None:
    result = run_cli(app, "create-admin", "new-admin@example.com")
    lines = result.output.strip().splitlines()
    assert len(lines) == 2
    label, _, password = lines[0].rpartition(": ")
    assert label == "password for new-admin@example.com"
    assert len(password) >= 16

    assert whoami(client, lines[1])["owner"]["email"] == "new-admin@example.com"
    assert login(client, "new-admin@example.com", password).status_code == 201


def test_create_admin_twice_issues_a_new_key_for_the_same_user(app: Any, client: Any) -> None:
    first = last_line(run_cli(app, "create-admin", "twice@example.com", "--password", "one").output)
    second_run = run_cli(app, "create-admin", "twice@example.com")
    second = last_line(second_run.output)
    assert "password" not in second_run.output  # the existing password is kept, not regenerated

    assert first != second
    me1, me2 = whoami(client, first), whoami(client, second)
    assert me1["id"] != me2["id"]
    assert me1["owner"]["id"] == me2["owner"]["id"]
    with app.app_context(), database.connection_context():
        assert User.select().where(User.email == "twice@example.com").count() == 1
    assert login(client, "twice@example.com", "one").status_code == 201

    run_cli(app, "create-admin", "twice@example.com", "--password", "two")
    assert login(client, "twice@example.com", "one").status_code == 401
    assert login(client, "twice@example.com", "two").status_code == 201


def test_create_admin_promotes_an_existing_member(app: Any, client: Any) -> None:
    user = make_user(app, "member@example.com", role="member")
    with app.app_context(), database.connection_context():
        User.update(disabled=True).where(User.id == user.id).execute()

    key = last_line(run_cli(app, "create-admin", "member@example.com").output)

    me = whoami(client, key)
    assert me["owner"]["role"] == "admin"
    assert "admin" in me["scopes"]


def test_db_upgrade_is_idempotent(app: Any, tmp_path: Path) -> None:
    # The session database is already migrated: nothing left to apply.
    assert run_cli(app, "db", "upgrade").output.strip() == "database is up to date"

    # A fresh database through the real entry point: everything applies once, then nothing.
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    first = run_flask(app, "db", "upgrade", database_url=fresh).stdout.strip()
    assert first == "applied: " + ", ".join(name for name, _ in migrations.MIGRATIONS)
    again = run_flask(app, "db", "upgrade", database_url=fresh).stdout.strip()
    assert again == "database is up to date"


def test_openapi_write_matches_the_live_spec(app: Any, client: Any, tmp_path: Path) -> None:
    output = tmp_path / "nested" / "openapi.json"
    result = run_cli(app, "openapi", "write", "--output", str(output))
    assert str(output) in result.output

    live = client.get("/api/v1/openapi.json")
    assert live.status_code == 200
    assert json.loads(output.read_text()) == live.get_json()
