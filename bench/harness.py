"""Helpers shared by the benchmark scripts in this folder (``bench/auth.py``, ``gateway.py``, ...).

The scripts run as ``.venv/bin/python bench/<name>.py`` from the repository root, so Python puts
this folder first on ``sys.path`` and ``from harness import ...`` just works; importing this
module puts the repository root on ``sys.path`` too, so the scripts can import ``app``.

What is here:

- setup: ``flushed_redis``, ``bench_env`` (the app's environment), ``prepare_database``
  (migrations + an admin key the rate limiter never refuses);
- child processes: the ``gunicorn`` context manager, ``start_server_process`` (a script's own
  helper server), ``stop_process_group``; ``JsonHandler`` and ``serve_on_free_port`` for those
  helper servers (fast local upstreams/receivers);
- load generators: ``run_wrk``, the multi-process Python fallback ``run_python_load``,
  ``run_load`` (either), ``request_loop`` (one keep-alive connection);
- CPU accounting from Linux ``/proc``: ``server_cpu_seconds`` (a gunicorn master's workers),
  ``tree_cpu_seconds`` (processes and all their descendants), ``postgres_backend_pids``;
- ``exit_status``: 1 if a log has a traceback.
"""

from __future__ import annotations

import http.client
import multiprocessing
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from flask import Flask

    from app.store.models import User


@dataclass
class LoadResult:
    """One load-generator run against one URL."""

    requests_per_second: float
    p50_ms: float | None
    errors: int  # non-2xx responses and socket errors
    cpu_ms_per_request: float | None = None  # server workers' CPU, when the script measures it
    p99_ms: float | None = None  # wrk only


# --- setup ----------------------------------------------------------------------------------


def flushed_redis(default_url: str) -> tuple[str, redis.Redis]:
    """``REDIS_URL`` (or ``default_url``) and a client on it, after flushing only that database."""
    url = os.environ.get("REDIS_URL") or default_url
    client = redis.Redis.from_url(url)
    client.flushdb()
    return url, client


def bench_env(tmp: Path, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment for the app under test: no inherited ``SWITCHBOARD_*`` settings, a
    SQLite database and instance folder in ``tmp``, ``redis_url``, a fresh secret key and quiet
    logs; ``extra`` adds or overrides variables."""
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp / 'bench.db'}",
        REDIS_URL=redis_url,
        SWITCHBOARD_SECRET_KEYS=Fernet.generate_key().decode(),
        SWITCHBOARD_LOG_LEVEL="WARNING",
        SWITCHBOARD_INSTANCE_PATH=str(tmp / "instance"),
    )
    env.update(extra)
    return env


def fresh_database(url: str) -> None:
    """Create the PostgreSQL database ``url`` names if missing and empty its public schema."""
    import psycopg2
    from psycopg2 import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = psycopg2.connect(url.replace(parts.path, "/postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    admin.close()
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    conn.close()


def prepare_database(app: Flask) -> tuple[User, str]:
    """Migrate ``app``'s database, create an admin user and an admin key (the default bcrypt
    cost) with ``rate_limit = 100_000_000`` so the limiter never refuses; return both."""
    from app.auth.issuing import ensure_admin, new_admin_key
    from app.auth.keys import key_prefix
    from app.store import migrations
    from app.store.db import database
    from app.store.models import ApiKey

    with app.app_context():
        migrations.upgrade()
        with database.connection_context(), database.atomic():
            user, _ = ensure_admin("bench@example.com", None)
            key = new_admin_key(user, "bench")
            ApiKey.update(rate_limit=100_000_000).where(
                ApiKey.key_prefix == key_prefix(key)
            ).execute()
    return user, key


def exit_status(log_text: str, heading: str) -> int:
    """1 after printing the tail of ``log_text`` under ``heading`` if it has a traceback, else 0."""
    if "Traceback" in log_text:
        print(f"\n{heading}:\n" + log_text[-4000:])
        return 1
    return 0


# --- CPU accounting (Linux /proc) -------------------------------------------------------------
# CPU seconds per request (or per event) barely move when other processes compete for the
# CPUs, unlike requests per second: on a shared machine they are the figures to compare.


def _process_table() -> dict[int, tuple[int, int]] | None:
    """pid -> (ppid, utime + stime in clock ticks) for every live process, or None off Linux."""
    table: dict[int, tuple[int, int]] = {}
    try:
        stats = list(Path("/proc").glob("[0-9]*/stat"))
    except OSError:
        return None
    for stat in stats:
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        table[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table or None


def _ticks_per_second() -> int:
    return os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def server_cpu_seconds(master_pid: int) -> float | None:
    """User + system CPU seconds used so far by the children of ``master_pid`` (gunicorn's
    workers, not the master itself), or None when ``/proc`` cannot tell."""
    table = _process_table()
    if table is None:
        return None
    total = sum(ticks for ppid, ticks in table.values() if ppid == master_pid)
    return total / _ticks_per_second() if total else None


def tree_cpu_seconds(pids: Iterable[int]) -> float | None:
    """User + system CPU seconds used so far by ``pids`` and all their live descendants, or
    None when ``/proc`` cannot tell. (A descendant that already exited is not counted.)"""
    table = _process_table()
    if table is None:
        return None
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    todo = [pid for pid in pids if pid in table]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += children.get(pid, [])
    return sum(table[pid][1] for pid in seen) / _ticks_per_second()


def postgres_backend_pids(database_url: str) -> list[int]:
    """Process ids of the PostgreSQL backends connected to ``database_url``'s database (on this
    machine: their CPU is in ``/proc`` too)."""
    import psycopg2

    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            )
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


# --- child processes ------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group led by ``proc`` (started with ``start_new_session``), SIGKILL
    it if it has not exited after 10 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


@contextmanager
def gunicorn(
    env: dict[str, str],
    worker_class: str,
    log_path: Path,
    *,
    threads: int = 4,
    app: str = "app:create_app()",
    worker_connections: int = 1000,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run ``app`` under ``gunicorn -w 2`` (``gthread`` with ``threads`` threads, ``gevent``
    with ``worker_connections``, or ``sync``), logging to ``log_path`` (appended); yield (base
    URL, master process) once ``GET /api/v1/health`` answers 200; always stop its whole process
    group."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "gunicorn"), "-w", "2"]
    if worker_class == "gthread":
        command += ["-k", "gthread", "--threads", str(threads)]
    elif worker_class == "gevent":
        command += ["-k", "gevent", "--worker-connections", str(worker_connections)]
    command += ["-b", f"127.0.0.1:{port}", "--log-level", "warning", app]
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(base + "/api/v1/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or too busy to answer
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not start:\n" + log_path.read_text())
            time.sleep(0.1)
        yield base, proc
    finally:
        stop_process_group(proc)


def start_server_process(
    script: str, flag: str, port_file: Path, what: str
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``script flag port_file`` in its own session (a server that writes its port to
    ``port_file`` once listening, see ``serve_on_free_port``); return it and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, script, flag, str(port_file)], cwd=ROOT, start_new_session=True
    )
    deadline = time.monotonic() + 15
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {what} did not start")
        time.sleep(0.02)
    return proc, f"http://127.0.0.1:{port_file.read_text()}"


# --- a fast local HTTP server (upstreams, receivers) ----------------------------------------


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # many concurrent connections must not overflow the backlog

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients closing at the end
            super().handle_error(request, client_address)


class JsonHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler base: ``send_json`` writes a 200 in one write, no logging."""

    protocol_version = "HTTP/1.1"
    wbufsize = -1  # one write per response: no Nagle/delayed-ACK stalls on keep-alive

    def send_json(self, body: bytes) -> None:
        """Answer 200 with the JSON ``body``."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def serve_on_free_port(handler: type[BaseHTTPRequestHandler], port_file: str) -> None:
    """Serve ``handler`` on a free 127.0.0.1 port until killed; write the port to ``port_file``
    (atomically) once listening."""
    server = _QuietServer(("127.0.0.1", 0), handler)
    Path(port_file + ".tmp").write_text(str(server.server_address[1]))
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()


# --- load generators ------------------------------------------------------------------------

_WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_P50 = re.compile(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_WRK_P99 = re.compile(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_WRK_ERRORS = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(
    url: str,
    headers: dict[str, str],
    threads: int,
    connections: int,
    seconds: float,
    timeout: float = 2.0,
) -> LoadResult:
    """Load ``url`` with wrk and parse its summary (a request slower than ``timeout`` seconds
    counts as an error)."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    command.append(f"--timeout={timeout:g}s")
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    rps = _WRK_RPS.search(output)
    if rps is None:
        raise RuntimeError("could not parse wrk output:\n" + output)
    p50 = _WRK_P50.search(output)
    p99 = _WRK_P99.search(output)
    errors = int(m.group(1)) if (m := _WRK_ERRORS.search(output)) else 0
    if socket_errors := _WRK_SOCKET.search(output):
        errors += sum(int(n) for n in socket_errors.groups())
    return LoadResult(
        float(rps.group(1)),
        float(p50.group(1)) * _UNIT_MS[p50.group(2)] if p50 else None,
        errors,
        p99_ms=float(p99.group(1)) * _UNIT_MS[p99.group(2)] if p99 else None,
    )


def request_loop(
    url: str, headers: dict[str, str], deadline: float, count: int | None
) -> tuple[int, int, list[float]]:
    """GET ``url`` on one keep-alive connection until ``deadline`` (or ``count`` requests);
    return (ok, errors, latencies in seconds)."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    ok = errors = 0
    latencies: list[float] = []
    while (started := time.perf_counter()) < deadline and (count is None or ok + errors < count):
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.will_close:  # gunicorn's sync workers close after every response
                conn.close()
            if 200 <= response.status < 400:
                ok += 1
            else:
                errors += 1
            latencies.append(time.perf_counter() - started)
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
    conn.close()
    return ok, errors, latencies


def _python_load_process(
    url: str, headers: dict[str, str], connections: int, seconds: float, out: Any
) -> None:
    """One client process: ``connections`` threads, each on its own keep-alive connection."""
    deadline = time.perf_counter() + seconds
    results: list[tuple[int, int, list[float]]] = []
    threads = [
        threading.Thread(target=lambda: results.append(request_loop(url, headers, deadline, None)))
        for _ in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(
        (
            sum(r[0] for r in results),
            sum(r[1] for r in results),
            [lat for r in results for lat in r[2]],
        )
    )


def run_python_load(
    url: str, headers: dict[str, str], processes: int, connections: int, seconds: float
) -> LoadResult:
    """Fallback load generator: ``processes`` processes sharing ``connections`` connections."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    per_process = max(1, connections // processes)
    workers = [
        ctx.Process(target=_python_load_process, args=(url, headers, per_process, seconds, out))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        results = [out.get(timeout=seconds + 60) for _ in workers]
    finally:
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()
    ok = sum(r[0] for r in results)
    latencies = [lat for r in results for lat in r[2]]
    return LoadResult(
        ok / seconds,
        statistics.median(latencies) * 1000 if latencies else None,
        sum(r[1] for r in results),
    )


def run_load(
    use_wrk: bool,
    url: str,
    headers: dict[str, str],
    threads: int,
    connections: int,
    seconds: float,
) -> LoadResult:
    """``run_wrk`` if ``use_wrk``, else ``run_python_load`` (``threads`` processes)."""
    if use_wrk:
        return run_wrk(url, headers, threads, connections, seconds)
    return run_python_load(url, headers, threads, connections, seconds)
