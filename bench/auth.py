"""Cost of key authentication (+ rate limiting + usage metering) under gunicorn.

Usage::

    .venv/bin/python bench/auth.py                     # defaults below
    .venv/bin/python bench/auth.py --worker-class sync --duration 10 --connections 32
    .venv/bin/python bench/auth.py --lease-seconds 0     # rate-limit leases switched off
    REDIS_URL=redis://127.0.0.1:6379/8 .venv/bin/python bench/auth.py

What it does, all in one run so the ratios compare like with like:

1. creates a throwaway SQLite database in a temp dir, migrates it, creates an admin user and an
   admin key through the app's own functions (``app.auth.issuing.ensure_admin`` /
   ``new_admin_key``, bcrypt at the default cost 12) with ``rate_limit = 100_000_000`` so the
   limiter never refuses, and inserts 200 integrations;
2. flushes only the chosen Redis database (``REDIS_URL``, default ``redis://127.0.0.1:6379/9``);
3. starts ``gunicorn -w 2 -k gthread --threads 4 "app:create_app()"`` (``--worker-class sync``
   for sync workers) with rate limiting ON and the default bcrypt cost;
4. times the very first ``GET /api/v1/auth/whoami`` (cold: a bcrypt check at cost 12) and the
   next ones (warm: the verified-key cache answers);
5. loads ``GET /api/v1/health`` (no auth, the baseline), ``GET /api/v1/auth/whoami`` (key auth)
   and ``GET /api/v1/integrations?limit=20`` (key auth + a page of 20 rows) with ``wrk`` if it is
   installed (else a multi-process Python client, slower: compare only its ratios), same threads,
   connections and duration for each, interleaved over ``--rounds`` rounds; the median round counts;
6. prints req/s per endpoint and the ratios whoami/health (target >= 0.75) and list/health
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
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import requests
from harness import (
    LoadResult,
    bench_env,
    exit_status,
    flushed_redis,
    gunicorn,
    prepare_database,
    run_load,
    server_cpu_seconds,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"
TARGETS = {"whoami": 0.75, "list": 0.40}
ENDPOINTS = {
    "health": ("/api/v1/health", False),
    "whoami": ("/api/v1/auth/whoami", True),
    "list": ("/api/v1/integrations?limit=20", True),
}


# --- setup ----------------------------------------------------------------------------------


def prepare(database_url: str, redis_url: str, secret_key: str) -> str:
    """Migrate a fresh database, create an admin + high-limit admin key and 200 integrations."""
    from app import create_app
    from app.store.db import database
    from app.store.models import DEFAULT_TENANT_ID, Integration

    app = create_app(
        {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "SECRET_KEYS": [secret_key]}
    )
    user, key = prepare_database(app)
    with app.app_context(), database.connection_context(), database.atomic():
        Integration.insert_many(
            [
                {
                    "tenant_id": DEFAULT_TENANT_ID,
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
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=None,
        help="SWITCHBOARD_RATELIMIT_LEASE_SECONDS for the server (default: the app's, 0.1)",
    )
    args = parser.parse_args()

    redis_url, _ = flushed_redis(DEFAULT_REDIS_URL)  # flushes only the chosen database
    use_wrk = shutil.which("wrk") is not None and not args.python_client
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    leasing = (
        {}
        if args.lease_seconds is None
        else {"SWITCHBOARD_RATELIMIT_LEASE_SECONDS": str(args.lease_seconds)}
    )
    env = bench_env(tmp, redis_url, **leasing)
    os.environ.update({k: env[k] for k in ("SWITCHBOARD_INSTANCE_PATH", "SWITCHBOARD_LOG_LEVEL")})
    os.environ.pop("SWITCHBOARD_BCRYPT_ROUNDS", None)  # the default cost (12) is what we time
    try:
        key = prepare(env["DATABASE_URL"], redis_url, env["SWITCHBOARD_SECRET_KEYS"])
        auth = {"Authorization": f"Bearer {key}"}
        with gunicorn(env, args.worker_class, tmp / "gunicorn.log") as (base, server):
            cold, second, warm = time_whoami(base, key)

            def load(name: str, seconds: int) -> LoadResult:
                path, needs_key = ENDPOINTS[name]
                headers = auth if needs_key else {}
                cpu_before = server_cpu_seconds(server.pid)
                result = run_load(
                    use_wrk, base + path, headers, args.threads, args.connections, seconds
                )
                cpu_after = server_cpu_seconds(server.pid)
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
    leases = (
        "the default leases (0.1 s)"
        if args.lease_seconds is None
        else f"leases of {args.lease_seconds:g} s"
        if args.lease_seconds
        else "no leases"
    )
    print(f"\ngunicorn -w 2 ({workers}), rate limiting on ({leases}), SQLite, {redis_url}")
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
    return exit_status(log_text, "server log has tracebacks")


if __name__ == "__main__":
    raise SystemExit(main())
