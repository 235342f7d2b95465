"""Gateway overhead: GET straight to an upstream vs GET through ``/api/v1/gateway/{id}/ping``.

Usage::

    .venv/bin/python bench/gateway.py                       # both worker classes, ~1.5 minutes
    .venv/bin/python bench/gateway.py --worker-class gthread --duration 10 --connections 32
    .venv/bin/python bench/gateway.py --python-client       # ignore wrk even if installed
    PYTHONPATH=/tmp/exp .venv/bin/python bench/gateway.py --app "mod:create()"  # experiments
    REDIS_URL=redis://127.0.0.1:6379/8 .venv/bin/python bench/gateway.py

What it does, all in one run so the ratios compare like with like:

1. starts a fast local upstream in its own process (``ThreadingHTTPServer``, HTTP/1.1 keep-alive,
   one buffered write per response) answering every GET with a small JSON body;
2. migrates a throwaway SQLite database in a temp dir, flushes only Redis db 8 (``REDIS_URL``),
   creates an admin key (bcrypt at the default cost) with ``rate_limit = 100_000_000`` (rate
   limiting stays ON: every proxied request is counted in Redis) and a ``rest`` integration
   (status active, ``{"upstreams": [{"url": upstream}], "timeout_ms": 5000}``) through the API;
3. for each gunicorn worker class (``sync``, and ``gthread --threads 4``; both unless
   ``--worker-class`` picks one) starts ``gunicorn -w 2 "app:create_app()"``, warms up, then
   measures, interleaved over ``--rounds`` rounds, requests/s and p50 latency of GET upstream
   ``/ping`` directly and through the gateway with the same load generator settings (``wrk
   -t2 -c16 -d5s`` when wrk is installed, else a multi-process Python client; the output says
   which), and a sequential single-connection run of ``--sequential`` requests each way for
   clean p50s; ``GET /api/v1/health`` (no key, no upstream) is loaded the same way, as the
   app's own floor (``gw/health``): the upstream is a bare socket server, so even an app that
   did nothing could not come near it;
4. prints a table per worker class and, for the better class (higher gateway requests/s), the
   throughput ratio gateway/direct (median of per-round ratios; target >= 0.5) and the p50
   latency the gateway adds in the sequential run (gateway p50 - direct p50; target <= 2 ms),
   each with PASS/MISS.

Worker class: both are measured because neither always wins; gthread keeps client connections
alive, sync closes after every response (wrk reconnects), and on a shared 2-core machine the
difference is within the noise. Exit status 1 if gunicorn logged a traceback. Every child
process is killed on exit. Timings are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import requests  # noqa: E402

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/8"
TARGET_RATIO = 0.5
TARGET_ADDED_MS = 2.0
UPSTREAM_BODY = b'{"ok":true,"service":"upstream","items":[1,2,3]}'


@dataclass
class LoadResult:
    """One load-generator run against one URL."""

    requests_per_second: float
    p50_ms: float | None
    errors: int  # non-2xx responses and socket errors


# --- the upstream (runs in its own process) -------------------------------------------------


class _UpstreamServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # many concurrent connections must not overflow the backlog

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients closing at the end
            super().handle_error(request, client_address)


def serve_upstream(port_file: str) -> None:
    """Answer every request with a small JSON body until killed; write the port once up."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = -1  # one write per response: no Nagle/delayed-ACK stalls on keep-alive

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(UPSTREAM_BODY)))
            self.end_headers()
            self.wfile.write(UPSTREAM_BODY)

        do_POST = do_HEAD = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    server = _UpstreamServer(("127.0.0.1", 0), Handler)
    Path(port_file + ".tmp").write_text(str(server.server_address[1]))
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()


def start_upstream(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = tmp / "upstream.port"
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, __file__, "--serve-upstream", str(port_file)],
        cwd=ROOT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 15
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the upstream did not start")
        time.sleep(0.02)
    return proc, f"http://127.0.0.1:{port_file.read_text()}"


# --- setup ----------------------------------------------------------------------------------


def prepare(upstream: str) -> tuple[str, str]:
    """Migrate; create the admin key (huge rate limit) and the rest integration via the API."""
    from app import create_app, migrations
    from app.auth.keys import key_prefix
    from app.cli import ensure_admin, new_admin_key
    from app.db import database
    from app.models import ApiKey

    app = create_app()
    with app.app_context():
        migrations.upgrade()
        with database.connection_context(), database.atomic():
            user, _ = ensure_admin("bench@example.com", None)
            key = new_admin_key(user, "bench")
            ApiKey.update(rate_limit=100_000_000).where(
                ApiKey.key_prefix == key_prefix(key)
            ).execute()
    res = app.test_client().post(
        "/api/v1/integrations",
        json={
            "name": "bench upstream",
            "type": "api",
            "provider": "rest",
            "status": "active",
            "config": {"upstreams": [{"url": upstream}], "timeout_ms": 5000},
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    if res.status_code != 201:
        raise RuntimeError(f"creating the integration: {res.status_code} {res.get_data()!r}")
    return key, res.get_json()["id"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gunicorn(
    env: dict[str, str], worker_class: str, threads: int, log_path: Path, app: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    command = [str(Path(sys.executable).parent / "gunicorn"), "-w", "2"]
    if worker_class == "gthread":
        command += ["-k", "gthread", "--threads", str(threads)]
    command += ["-b", f"127.0.0.1:{port}", "--log-level", "warning", app]
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(  # noqa: S603
            command,
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(base + "/api/v1/health", timeout=1).status_code == 200:
                return proc, base
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process_group(proc)
            raise RuntimeError("gunicorn did not start:\n" + log_path.read_text())
        time.sleep(0.1)


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
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


# --- load generators ------------------------------------------------------------------------

_WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_P50 = re.compile(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_WRK_ERRORS = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(
    url: str, headers: dict[str, str], threads: int, connections: int, seconds: float
) -> LoadResult:
    """Load ``url`` with wrk and parse its summary."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    rps = _WRK_RPS.search(output)
    if rps is None:
        raise RuntimeError("could not parse wrk output:\n" + output)
    p50 = _WRK_P50.search(output)
    errors = int(m.group(1)) if (m := _WRK_ERRORS.search(output)) else 0
    if socket_errors := _WRK_SOCKET.search(output):
        errors += sum(int(n) for n in socket_errors.groups())
    return LoadResult(
        float(rps.group(1)),
        float(p50.group(1)) * _UNIT_MS[p50.group(2)] if p50 else None,
        errors,
    )


def _request_loop(
    url: str, headers: dict[str, str], deadline: float, count: int | None
) -> tuple[int, int, list[float]]:
    """GET ``url`` on one keep-alive connection until ``deadline`` (or ``count`` requests)."""
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
        threading.Thread(target=lambda: results.append(_request_loop(url, headers, deadline, None)))
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


def run_python(
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


def sequential(url: str, headers: dict[str, str], n: int) -> tuple[float, int]:
    """p50 (ms) and errors of ``n`` GETs one after the other on one connection (+ warm-up)."""
    _request_loop(url, headers, time.perf_counter() + 30, 20)
    _, errors, latencies = _request_loop(url, headers, time.perf_counter() + 60, n)
    return statistics.median(latencies) * 1000, errors


# --- main -----------------------------------------------------------------------------------


@dataclass
class ClassResult:
    """Everything measured for one gunicorn worker class."""

    name: str
    direct: list[LoadResult]
    gateway: list[LoadResult]
    health: list[LoadResult]  # the app's floor: GET /api/v1/health, no key, no upstream
    direct_seq_p50: float
    gateway_seq_p50: float
    seq_errors: int

    @property
    def direct_rps(self) -> float:
        return statistics.median(r.requests_per_second for r in self.direct)

    @property
    def gateway_rps(self) -> float:
        return statistics.median(r.requests_per_second for r in self.gateway)

    @property
    def ratio(self) -> float:
        """Median of the per-round gateway/direct ratios (each round measures both)."""
        return statistics.median(
            g.requests_per_second / d.requests_per_second
            for g, d in zip(self.gateway, self.direct, strict=True)
        )

    @property
    def added_ms(self) -> float:
        return self.gateway_seq_p50 - self.direct_seq_p50


def main() -> int:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-class", choices=("both", "gthread", "sync"), default="both")
    parser.add_argument("--gthreads", type=int, default=4, help="threads per gthread worker")
    parser.add_argument("--threads", type=int, default=2, help="load-generator threads/processes")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per target")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median used)")
    parser.add_argument("--sequential", type=int, default=500, help="requests, one connection")
    parser.add_argument("--python-client", action="store_true", help="ignore wrk if installed")
    parser.add_argument(
        "--app", default="app:create_app()", help="WSGI app for gunicorn (for experiments)"
    )
    parser.add_argument("--serve-upstream", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0

    from cryptography.fernet import Fernet

    classes = ["sync", "gthread"] if args.worker_class == "both" else [args.worker_class]
    use_wrk = shutil.which("wrk") is not None and not args.python_client
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    redis_client = redis.Redis.from_url(redis_url)
    redis_client.flushdb()  # only the benchmark's database
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-bench-gateway-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp / 'bench.db'}",
        REDIS_URL=redis_url,
        SWITCHBOARD_SECRET_KEYS=Fernet.generate_key().decode(),
        SWITCHBOARD_ALLOWED_NETWORKS="127.0.0.0/8",
        SWITCHBOARD_LOG_LEVEL="WARNING",
        SWITCHBOARD_INSTANCE_PATH=str(tmp / "instance"),
    )
    os.environ.clear()
    os.environ.update(env)  # the in-process setup uses the same settings as gunicorn

    def load(url: str, headers: dict[str, str], seconds: float) -> LoadResult:
        if use_wrk:
            return run_wrk(url, headers, args.threads, args.connections, seconds)
        return run_python(url, headers, args.threads, args.connections, seconds)

    upstream_proc: subprocess.Popen[bytes] | None = None
    server: subprocess.Popen[bytes] | None = None
    results: list[ClassResult] = []
    log_path = tmp / "gunicorn.log"
    try:
        upstream_proc, upstream = start_upstream(tmp)
        key, integration_id = prepare(upstream)
        auth = {"Authorization": f"Bearer {key}"}
        direct_url = upstream + "/ping"
        for worker_class in classes:
            server, base = start_gunicorn(env, worker_class, args.gthreads, log_path, args.app)
            gateway_url = f"{base}/api/v1/gateway/{integration_id}/ping"
            check = requests.get(gateway_url, headers=auth, timeout=30)  # also verifies the key
            if check.status_code != 200 or check.content != UPSTREAM_BODY:
                raise RuntimeError(f"gateway answered {check.status_code}: {check.text[:500]}")
            for _ in range(20):  # every gunicorn worker verifies the key (bcrypt) once
                requests.get(gateway_url, headers=auth, timeout=30).raise_for_status()
            load(gateway_url, auth, args.warmup)
            load(direct_url, {}, min(args.warmup, 1))
            load(base + "/api/v1/health", {}, min(args.warmup, 1))
            direct: list[LoadResult] = []
            gateway: list[LoadResult] = []
            health: list[LoadResult] = []
            for _ in range(args.rounds):
                direct.append(load(direct_url, {}, args.duration))
                gateway.append(load(gateway_url, auth, args.duration))
                health.append(load(base + "/api/v1/health", {}, args.duration))
            direct_p50, direct_errors = sequential(direct_url, {}, args.sequential)
            gateway_p50, gateway_errors = sequential(gateway_url, auth, args.sequential)
            results.append(
                ClassResult(
                    worker_class if worker_class == "sync" else f"gthread x{args.gthreads}",
                    direct,
                    gateway,
                    health,
                    direct_p50,
                    gateway_p50,
                    direct_errors + gateway_errors,
                )
            )
            stop_process_group(server)
            server = None
        log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
    finally:
        if server is not None:
            stop_process_group(server)
        if upstream_proc is not None:
            stop_process_group(upstream_proc)
        shutil.rmtree(tmp, ignore_errors=True)
        redis_client.flushdb()

    generator = (
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s"
        if use_wrk
        else f"Python client ({args.threads} processes, {args.connections} keep-alive "
        f"connections, {args.duration:g}s; slower than wrk: compare only its ratios)"
    )
    print(
        f"\ngateway: gunicorn -w 2 {args.app!r}, rate limiting ON (key limit 1e8/h), "
        f"SQLite, {redis_url}"
    )
    print(f"load generator: {generator}, {args.rounds} interleaved rounds (median)")
    print(f"sequential: {args.sequential} GETs on one connection (reconnecting when told)\n")
    header = f"{'worker class':<12} {'target':<10} {'req/s':>8} {'rounds':>16} {'p50 load':>9}"
    print(f"{header} {'p50 seq':>8} {'errors':>6}")
    for res in results:
        for label, runs, seq in (
            ("direct", res.direct, res.direct_seq_p50),
            ("gateway", res.gateway, res.gateway_seq_p50),
            ("health", res.health, None),
        ):
            rates = " ".join(f"{r.requests_per_second:.0f}" for r in runs)
            p50s = [r.p50_ms for r in runs if r.p50_ms is not None]
            p50 = f"{statistics.median(p50s):7.2f}ms" if p50s else "        -"
            errors = sum(r.errors for r in runs)
            median_rps = statistics.median(r.requests_per_second for r in runs)
            shown_seq = f"{seq:6.2f}ms" if seq is not None else "       -"
            print(
                f"{res.name:<12} {label:<10} {median_rps:8.0f} {rates:>16} {p50:>9} "
                f"{shown_seq} {errors:6d}"
            )
        health_rps = statistics.median(r.requests_per_second for r in res.health)
        print(
            f"{res.name:<12} {'gw/direct':<10} {res.ratio:8.3f}   added p50 (sequential) "
            f"{res.added_ms:.2f} ms, sequential errors {res.seq_errors}"
        )
        print(
            f"{res.name:<12} {'gw/health':<10} {res.gateway_rps / health_rps:8.3f}   (health: "
            "the same gunicorn answering GET /api/v1/health, no key, no upstream)\n"
        )
    best = max(results, key=lambda r: r.gateway_rps)
    if len(results) > 1:
        print(f"better worker class (gateway req/s): {best.name}")
    verdict = "PASS" if best.ratio >= TARGET_RATIO else "MISS"
    print(
        f"[{best.name}] gateway/direct requests/s = {best.ratio:.3f}   "
        f"target >= {TARGET_RATIO}   {verdict}"
    )
    verdict = "PASS" if best.added_ms <= TARGET_ADDED_MS else "MISS"
    print(
        f"[{best.name}] p50 added latency = {best.added_ms:.2f} ms "
        f"({best.gateway_seq_p50:.2f} - {best.direct_seq_p50:.2f})   "
        f"target <= {TARGET_ADDED_MS:g} ms   {verdict}"
    )
    if "Traceback" in log_text:
        print("\ngunicorn log has tracebacks:\n" + log_text[-4000:])
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
