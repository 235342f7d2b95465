"""Gateway overhead: GET straight to an upstream vs GET through ``/api/v1/gateway/{id}/ping``.

Usage::

    .venv/bin/python bench/gateway.py                       # both worker classes, ~1.5 minutes
    .venv/bin/python bench/gateway.py --worker-class gthread --duration 10 --connections 32
    .venv/bin/python bench/gateway.py --python-client       # ignore wrk even if installed
    .venv/bin/python bench/gateway.py --lease-seconds 0.1   # rate-limit leases switched on
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
   throughput ratio gateway/health (median of per-round ratios; target >= 0.5: a proxied request
   may cost the app at most about twice what its cheapest answer costs) and the p50 latency the
   gateway adds in the sequential run (gateway p50 - direct p50; target <= 1 ms), each with
   PASS/MISS; gateway/direct is printed too, for reference.

Worker class: both are measured because neither always wins; gthread keeps client connections
alive, sync closes after every response (wrk reconnects), and on a shared 2-core machine the
difference is within the noise. Exit status 1 if gunicorn logged a traceback. Every child
process is killed on exit. Timings are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from harness import (
    JsonHandler,
    LoadResult,
    bench_env,
    exit_status,
    flushed_redis,
    gunicorn,
    prepare_database,
    request_loop,
    run_load,
    serve_on_free_port,
    start_server_process,
    stop_process_group,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/8"
TARGET_RATIO = 0.5  # gateway / health
TARGET_ADDED_MS = 1.0
UPSTREAM_BODY = b'{"ok":true,"service":"upstream","items":[1,2,3]}'


# --- the upstream (runs in its own process) -------------------------------------------------


def serve_upstream(port_file: str) -> None:
    """Answer every request with a small JSON body until killed; write the port once up."""

    class Handler(JsonHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_json(UPSTREAM_BODY)

        do_POST = do_HEAD = do_GET

    serve_on_free_port(Handler, port_file)


def start_upstream(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``serve_upstream`` in a child process; return it and its base URL."""
    return start_server_process(__file__, "--serve-upstream", tmp / "upstream.port", "upstream")


# --- setup ----------------------------------------------------------------------------------


def prepare(upstream: str) -> tuple[str, str]:
    """Migrate; create the admin key (huge rate limit) and the rest integration via the API."""
    from app import create_app

    app = create_app()
    _, key = prepare_database(app)
    return key, create_rest_integration(app.test_client(), key, upstream)


def create_rest_integration(client: Any, key: str, upstream: str) -> str:
    """Create the active ``rest`` integration in front of ``upstream`` through the API; its id."""
    res = client.post(
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
    integration_id: str = res.get_json()["id"]
    return integration_id


# --- measurements --------------------------------------------------------------------------


def sequential(url: str, headers: dict[str, str], n: int) -> tuple[float, int]:
    """p50 (ms) and errors of ``n`` GETs one after the other on one connection (+ warm-up)."""
    request_loop(url, headers, time.perf_counter() + 30, 20)
    _, errors, latencies = request_loop(url, headers, time.perf_counter() + 60, n)
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
    def health_ratio(self) -> float:
        """Median of the per-round gateway/health ratios (each round measures both)."""
        return statistics.median(
            g.requests_per_second / h.requests_per_second
            for g, h in zip(self.gateway, self.health, strict=True)
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
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=0.0,
        help="SWITCHBOARD_RATELIMIT_LEASE_SECONDS for the server (default 0: no leases)",
    )
    parser.add_argument("--serve-upstream", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0

    classes = ["sync", "gthread"] if args.worker_class == "both" else [args.worker_class]
    use_wrk = shutil.which("wrk") is not None and not args.python_client
    redis_url, redis_client = flushed_redis(DEFAULT_REDIS_URL)  # only the benchmark's db
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-bench-gateway-"))
    env = bench_env(
        tmp,
        redis_url,
        SWITCHBOARD_ALLOWED_NETWORKS="127.0.0.0/8",
        SWITCHBOARD_RATELIMIT_LEASE_SECONDS=str(args.lease_seconds),
    )
    os.environ.clear()
    os.environ.update(env)  # the in-process setup uses the same settings as gunicorn

    def load(url: str, headers: dict[str, str], seconds: float) -> LoadResult:
        return run_load(use_wrk, url, headers, args.threads, args.connections, seconds)

    upstream_proc: subprocess.Popen[bytes] | None = None
    results: list[ClassResult] = []
    log_path = tmp / "gunicorn.log"
    try:
        upstream_proc, upstream = start_upstream(tmp)
        key, integration_id = prepare(upstream)
        auth = {"Authorization": f"Bearer {key}"}
        direct_url = upstream + "/ping"
        for worker_class in classes:
            server = gunicorn(env, worker_class, log_path, threads=args.gthreads, app=args.app)
            with server as (base, _):
                gateway_url = f"{base}/api/v1/gateway/{integration_id}/ping"
                check = requests.get(gateway_url, headers=auth, timeout=30)  # verifies the key
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
        log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
    finally:
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
        f"\ngateway: gunicorn -w 2 {args.app!r}, rate limiting ON (key limit 1e8/h, "
        f"{f'leases of {args.lease_seconds:g} s' if args.lease_seconds else 'no leases'}), "
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
        print(
            f"{res.name:<12} {'gw/direct':<10} {res.ratio:8.3f}   added p50 (sequential) "
            f"{res.added_ms:.2f} ms, sequential errors {res.seq_errors}"
        )
        print(
            f"{res.name:<12} {'gw/health':<10} {res.health_ratio:8.3f}   (health: "
            "the same gunicorn answering GET /api/v1/health, no key, no upstream)\n"
        )
    best = max(results, key=lambda r: r.gateway_rps)
    if len(results) > 1:
        print(f"better worker class (gateway req/s): {best.name}")
    verdict = "PASS" if best.health_ratio >= TARGET_RATIO else "MISS"
    print(
        f"[{best.name}] gateway/health requests/s = {best.health_ratio:.3f}   "
        f"target >= {TARGET_RATIO}   {verdict}"
    )
    verdict = "PASS" if best.added_ms <= TARGET_ADDED_MS else "MISS"
    print(
        f"[{best.name}] p50 added latency = {best.added_ms:.2f} ms "
        f"({best.gateway_seq_p50:.2f} - {best.direct_seq_p50:.2f})   "
        f"target <= {TARGET_ADDED_MS:g} ms   {verdict}"
    )
    return exit_status(log_text, "gunicorn log has tracebacks")


if __name__ == "__main__":
    raise SystemExit(main())
