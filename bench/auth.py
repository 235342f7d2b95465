"""Cost of key authentication (+ rate limiting + usage metering) under gunicorn.

Usage::

    .venv/bin/python bench/auth.py                     # defaults below
    .venv/bin/python bench/auth.py --worker-class sync --duration 10 --connections 32
    REDIS_URL=redis://127.0.0.1:6379/8 .venv/bin/python bench/auth.py

What it does, all in one run so the ratios compare like with like:

1. creates a throwaway SQLite database in a temp dir, migrates it, creates an admin user and an
   admin key through the app's own functions (``app.cli.ensure_admin`` / ``new_admin_key``, bcrypt
   at the default cost 12) with ``rate_limit = 100_000_000`` so the limiter never refuses, and
   inserts 200 integrations;
2. flushes only the chosen Redis database (``REDIS_URL``, default ``redis://127.0.0.1:6379/9``);
3. starts ``gunicorn -w 2 -k gthread --threads 4 "app:create_app()"`` (``--worker-class sync``
   for sync workers) with rate limiting ON and the default bcrypt cost;
4. times the very first ``GET /api/v1/auth/whoami`` (cold: a bcrypt check at cost 12) and the
   next ones (warm: the verified-key cache answers);
5. loads ``GET /api/v1/health`` (no auth, the baseline), ``GET /api/v1/auth/whoami`` (key auth)
   and ``GET /api/v1/integrations?limit=20`` (key auth + a page of 20 rows) with ``wrk`` if it is
   installed (else a multi-process Python client, slower: compare only its ratios), same threads,
   connections and duration for each, interleaved over ``--rounds`` rounds; the median round counts;
6. prints req/s per endpoint and the ratios whoami/health (target >= 0.80) and list/health
   (target >= 0.40) with PASS/MISS.

Worker class: gthread (2 workers x 4 threads) is the default: it keeps client connections alive
and gave the best absolute numbers here (2-core box, health ~2100 req/s vs ~1500 with sync). With
sync workers every request pays a new TCP connection, which raises the baseline's cost and so
makes the ratios look better than they are for keep-alive clients. ``server CPU ms/req`` (from
/proc, Linux only) is printed next to req/s because it barely moves when other processes share
the machine, while req/s does.
Timings here are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import requests  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"
TARGETS = {"whoami": 0.80, "list": 0.40}
ENDPOINTS = {
    "health": ("/api/v1/health", False),
    "whoami": ("/api/v1/auth/whoami", True),
    "list": ("/api/v1/integrations?limit=20", True),
}


@dataclass
class LoadResult:
    """One load-generator run against one endpoint."""

    requests_per_second: float
    p50_ms: float | None
    errors: int  # non-2xx responses and socket errors
    cpu_ms_per_request: float | None = None  # server workers' CPU, when /proc is available


# --- setup ----------------------------------------------------------------------------------


def prepare_database(database_url: str, redis_url: str, secret_key: str) -> str:
    """Migrate a fresh database, create an admin + high-limit admin key and 200 integrations."""
    from app import create_app, migrations
    from app.auth.keys import key_prefix
    from app.cli import ensure_admin, new_admin_key
    from app.db import database
    from app.models import ApiKey, Integration

    app = create_app(
        {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "SECRET_KEYS": [secret_key]}
    )
    with app.app_context():
        migrations.upgrade()
        with database.connection_context(), database.atomic():
            user, _ = ensure_admin("bench@example.com", None)
            key = new_admin_key(user, "bench")
            ApiKey.update(rate_limit=100_000_000).where(
                ApiKey.key_prefix == key_prefix(key)
            ).execute()
            Integration.insert_many(
                [
                    {
                        "name": f"bench integration {i:03d}",
                        "type": "api",
                        "provider": "rest",
                        "status": "active",
                        "description": "benchmark fixture",
                        "config": {},
                        "metadata": {"n": i},
                        "created_by": user.id,
                    }
                    for i in range(200)
                ]
            ).execute()
    return key


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def gunicorn(env: dict[str, str], worker_class: str, log_path: Path) -> Iterator[tuple[str, int]]:
    """Run the app under gunicorn (2 workers), yield (base URL, master pid); always stop it."""
    port = _free_port()
    command = [str(Path(sys.executable).parent / "gunicorn"), "-w", "2"]
    if worker_class == "gthread":
        command += ["-k", "gthread", "--threads", "4"]
    command += ["-b", f"127.0.0.1:{port}", "--log-level", "warning", "app:create_app()"]
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(base + ENDPOINTS["health"][0], timeout=1).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or too busy to answer
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not start:\n" + log_path.read_text())
            time.sleep(0.1)
        yield base, server.pid
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def server_cpu_seconds(master_pid: int) -> float | None:
    """User + system CPU seconds used so far by gunicorn's workers (Linux ``/proc``), or None.

    Unlike req/s, CPU per request barely moves when other processes compete for the CPUs.
    """
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    try:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # the process ended while we looked
                continue
            if int(fields[1]) == master_pid:  # ppid
                total += int(fields[11]) + int(fields[12])  # utime + stime
    except OSError:
        return None
    return total / ticks if total else None


# --- key verification timing ----------------------------------------------------------------


def time_whoami(base: str, key: str) -> tuple[float, float, float]:
    """Seconds for the first (cold) whoami, the second, and the median of 20 warm ones.

    Each request opens its own connection, so with 2 workers the second request may land on the
    other, still cold worker; the warm median is taken after every worker has verified the key.
    """
    url, headers = base + ENDPOINTS["whoami"][0], {"Authorization": f"Bearer {key}"}

    def timed() -> float:
        started = time.perf_counter()
        response = requests.get(url, headers=headers, timeout=30)
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        return elapsed

    cold, second = timed(), timed()
    for _ in range(20):  # make sure every worker (and thread) has the key in its cache
        timed()
    return cold, second, statistics.median(timed() for _ in range(20))


# --- load generators ------------------------------------------------------------------------

_WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_P50 = re.compile(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_WRK_ERRORS = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(
    url: str, headers: dict[str, str], threads: int, connections: int, seconds: int
) -> LoadResult:
    """Load ``url`` with wrk and parse its summary."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
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


def _python_load_process(
    url: str, headers: dict[str, str], connections: int, seconds: float, out: Any
) -> None:
    """One client process: ``connections`` threads, each on its own keep-alive connection."""
    parsed = requests.utils.urlparse(url)
    path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
    ok, errors, latencies = [0], [0], []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        mine_ok = mine_err = 0
        mine_lat = []
        while (started := time.perf_counter()) < deadline:
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.will_close:
                    conn.close()
                if 200 <= response.status < 400:
                    mine_ok += 1
                else:
                    mine_err += 1
                mine_lat.append(time.perf_counter() - started)
            except (OSError, http.client.HTTPException):
                mine_err += 1
                conn.close()
        with lock:
            ok[0] += mine_ok
            errors[0] += mine_err
            latencies.extend(mine_lat)

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put((ok[0], errors[0], latencies))


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
    results = [out.get(timeout=seconds + 60) for _ in workers]
    for worker in workers:
        worker.join()
    ok = sum(r[0] for r in results)
    latencies = [lat for r in results for lat in r[2]]
    return LoadResult(
        ok / seconds,
        statistics.median(latencies) * 1000 if latencies else None,
        sum(r[1] for r in results),
    )


# --- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-class", choices=("gthread", "sync"), default="gthread")
    parser.add_argument("--threads", type=int, default=2, help="load-generator threads/processes")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="seconds per endpoint")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median used)")
    parser.add_argument("--python-client", action="store_true", help="ignore wrk even if installed")
    args = parser.parse_args()

    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    redis.Redis.from_url(redis_url).flushdb()  # only the chosen database
    use_wrk = shutil.which("wrk") is not None and not args.python_client
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    secret_key = Fernet.generate_key().decode()
    database_url = f"sqlite:///{tmp / 'bench.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        SWITCHBOARD_SECRET_KEYS=secret_key,
        SWITCHBOARD_INSTANCE_PATH=str(tmp / "instance"),
        SWITCHBOARD_LOG_LEVEL="WARNING",
    )
    os.environ.update({k: env[k] for k in ("SWITCHBOARD_INSTANCE_PATH", "SWITCHBOARD_LOG_LEVEL")})
    os.environ.pop("SWITCHBOARD_BCRYPT_ROUNDS", None)  # the default cost (12) is what we time
    try:
        key = prepare_database(database_url, redis_url, secret_key)
        auth = {"Authorization": f"Bearer {key}"}
        with gunicorn(env, args.worker_class, tmp / "gunicorn.log") as (base, master_pid):
            cold, second, warm = time_whoami(base, key)

            def load(name: str, seconds: int) -> LoadResult:
                path, needs_key = ENDPOINTS[name]
                headers = auth if needs_key else {}
                cpu_before = server_cpu_seconds(master_pid)
                if use_wrk:
                    result = run_wrk(base + path, headers, args.threads, args.connections, seconds)
                else:
                    result = run_python(
                        base + path, headers, args.threads, args.connections, seconds
                    )
                cpu_after = server_cpu_seconds(master_pid)
                if cpu_before is not None and cpu_after is not None:
                    served = result.requests_per_second * seconds
                    result.cpu_ms_per_request = (cpu_after - cpu_before) * 1000 / max(served, 1)
                return result

            for name in ENDPOINTS:
                load(name, args.warmup)
            rounds: dict[str, list[LoadResult]] = {name: [] for name in ENDPOINTS}
            for _ in range(args.rounds):
                for name in ENDPOINTS:
                    rounds[name].append(load(name, args.duration))
        log_text = (tmp / "gunicorn.log").read_text()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    generator = (
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s"
        if use_wrk
        else f"python client: {args.threads} processes, {args.connections} connections, "
        f"{args.duration:g}s"
    )
    workers = "gthread, 4 threads each" if args.worker_class == "gthread" else "sync"
    print(f"\ngunicorn -w 2 ({workers}), rate limiting on, SQLite, {redis_url}")
    print(
        f"load: {generator}, {args.rounds} interleaved rounds (median), warm-up {args.warmup:g}s\n"
    )
    print(f"key verification: first whoami (cold, bcrypt cost 12) {cold * 1000:7.1f} ms")
    print(f"                  second whoami                        {second * 1000:7.1f} ms")
    print(f"                  warm whoami (median of 20)           {warm * 1000:7.1f} ms\n")

    medians: dict[str, float] = {}
    cpu: dict[str, float] = {}
    print(
        f"{'endpoint':<40} {'req/s':>7} {'(rounds)':>20} {'p50 ms':>7} "
        f"{'server CPU ms/req':>18} {'errors':>6}"
    )
    for name, results in rounds.items():
        rates = [r.requests_per_second for r in results]
        medians[name] = statistics.median(rates)
        p50s = [r.p50_ms for r in results if r.p50_ms is not None]
        p50 = f"{statistics.median(p50s):7.2f}" if p50s else "      -"
        cpus = [r.cpu_ms_per_request for r in results if r.cpu_ms_per_request is not None]
        if cpus:
            cpu[name] = statistics.median(cpus)
        cpu_text = f"{cpu[name]:18.3f}" if name in cpu else f"{'-':>18}"
        shown = "(" + " ".join(f"{rate:.0f}" for rate in rates) + ")"
        errors = sum(r.errors for r in results)
        print(
            f"GET {ENDPOINTS[name][0]:<36} {medians[name]:7.0f} {shown:>20} {p50} "
            f"{cpu_text} {errors:6d}"
        )
    print()
    for name, target in TARGETS.items():
        ratio = medians[name] / medians["health"]
        verdict = "PASS" if ratio >= target else "MISS"
        by_cpu = (
            f"   (by server CPU per request: {cpu['health'] / cpu[name]:.2f})"
            if "health" in cpu and name in cpu
            else ""
        )
        print(f"{name}/health = {ratio:.2f}   target >= {target:.2f}   {verdict}{by_cpu}")
    if any(r.errors for results in rounds.values() for r in results):
        print("\nWARNING: some requests failed (non-2xx or socket errors); see the errors column.")
    if "Traceback" in log_text:
        print("\nserver log has tracebacks:\n" + log_text[-4000:])
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
