"""Gateway overhead: GET straight to an upstream vs GET through ``/api/v1/gateway/{id}/ping``.

Usage::

    .venv/bin/python bench/gateway.py                       # the gevent gateway service
    .venv/bin/python bench/gateway.py --upstream-delay 0.1 --connections 256   # slow upstream
    .venv/bin/python bench/gateway.py --worker-class all    # sync, gthread and gevent side by side
    .venv/bin/python bench/gateway.py --worker-class gthread --gthreads 8 --duration 10
    .venv/bin/python bench/gateway.py --python-client       # ignore wrk even if installed
    .venv/bin/python bench/gateway.py --lease-seconds 0     # rate-limit leases switched off
    PYTHONPATH=/tmp/exp .venv/bin/python bench/gateway.py --app "mod:create()"  # experiments
    REDIS_URL=redis://127.0.0.1:6379/8 .venv/bin/python bench/gateway.py

What it does, all in one run so the ratios compare like with like:

1. starts a local upstream in its own process: a bare gevent socket server (HTTP/1.1
   keep-alive) answering every request with a small JSON body after ``--upstream-delay``
   seconds, so it holds thousands of slow requests on one core;
2. migrates a throwaway SQLite database in a temp dir, flushes only Redis db 8 (``REDIS_URL``),
   creates an admin key (bcrypt at the default cost) with ``rate_limit = 100_000_000`` (rate
   limiting stays ON: every proxied request is counted in Redis, through the default leases)
   and a ``rest`` integration in front of the upstream through the API;
3. for each gunicorn worker class (``gevent`` with ``--worker-connections``, as the gateway
   service runs; ``sync`` and ``gthread`` with ``--worker-class both|all``) starts
   ``gunicorn -w 2 "app:create_app()"``, warms up, then measures, interleaved over
   ``--rounds`` rounds, requests/s, p50 and p99 of GET upstream ``/ping`` directly (the
   upstream's own capacity, checked in the same run) and through the gateway with the same
   load generator settings (``wrk -t2 -c16 -d5s`` when wrk is installed, else a multi-process
   Python client), and a sequential single-connection run for clean p50s; ``GET
   /api/v1/health`` is loaded the same way, as the app's own floor (``gw/health``);
4. under gevent, holds ``--memory-requests`` (1,000) proxied requests open at once (the
   upstream holds each for 20 s) and prints the workers' resident memory per held request;
5. prints a table per worker class and, for the better class (higher gateway requests/s), the
   targets with PASS/MISS. With an instant upstream: gateway/health >= 0.5 (median of per-round
   ratios) and p50 added by the gateway in the sequential run <= 1 ms. With a slow upstream
   (``--upstream-delay``): gateway/direct >= 0.8, no errors, and gateway p99 <= the upstream's
   delay + 50 ms.

Exit status 1 if gunicorn logged a traceback. Every child process is killed on exit. Timings
are measurements, never test assertions; on a shared machine compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from harness import (
    LoadResult,
    bench_env,
    exit_status,
    flushed_redis,
    gunicorn,
    prepare_database,
    request_loop,
    run_load,
    run_wrk,
    start_server_process,
    stop_process_group,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/8"
TARGET_RATIO = 0.5  # gateway / health
TARGET_ADDED_MS = 1.0
UPSTREAM_BODY = b'{"ok":true,"service":"upstream","items":[1,2,3]}'
HOLD_SECONDS = 20.0  # how long the upstream holds a /hold request (the memory measurement)
UPSTREAM_TIMEOUT_MS = 60_000  # the integration's timeout: longer than a hold
TARGET_SLOW_RATIO = 0.8  # gateway / direct with a slow upstream
TARGET_SLOW_P99_MS = 50.0  # gateway p99 - upstream delay
_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


# --- the upstream (runs in its own process) -------------------------------------------------


def serve_upstream(port_file: str) -> None:
    """Answer every request with a small JSON body until killed; write the port once up.

    A bare gevent socket server (HTTP/1.1 keep-alive, ``Content-Length`` bodies only), so it
    can hold thousands of slow requests on one core: each answer waits ``BENCH_UPSTREAM_DELAY``
    seconds (a greenlet sleeping), ``/hold`` waits ``HOLD_SECONDS``, and ``/held`` answers at
    once with how many requests are being held right now.
    """
    import gevent
    from gevent.server import StreamServer

    delay = float(os.environ.get("BENCH_UPSTREAM_DELAY") or 0)
    held = 0

    def answer(body: bytes) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    canned = answer(UPSTREAM_BODY)

    def handle(sock: Any, _: Any) -> None:
        try:
            serve_connection(sock)
        except OSError:  # a client gone mid-request (wrk ends its run by closing)
            pass

    def serve_connection(sock: Any) -> None:
        nonlocal held
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = sock.recv(65536)
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = _CONTENT_LENGTH.search(head)
            remaining = int(length.group(1)) if length else 0
            while len(buffer) < remaining:
                data = sock.recv(65536)
                if not data:
                    return
                buffer += data
            buffer = buffer[remaining:]
            path = head.split(b" ", 2)[1]
            if path.startswith(b"/held"):
                sock.sendall(answer(str(held).encode()))
                continue
            wait = HOLD_SECONDS if path.startswith(b"/hold") else delay
            if wait:
                held += 1
                try:
                    gevent.sleep(wait)
                finally:
                    held -= 1
            sock.sendall(canned)

    server = StreamServer(("127.0.0.1", 0), handle, backlog=4096)
    server.init_socket()
    Path(port_file + ".tmp").write_text(str(server.server_port))
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()


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
            "config": {"upstreams": [{"url": upstream}], "timeout_ms": UPSTREAM_TIMEOUT_MS},
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    if res.status_code != 201:
        raise RuntimeError(f"creating the integration: {res.status_code} {res.get_data()!r}")
    integration_id: str = res.get_json()["id"]
    return integration_id


# --- measurements --------------------------------------------------------------------------


def worker_rss_kib(master_pid: int) -> int:
    """Resident memory (KiB) of the gunicorn master's workers, summed (Linux ``/proc``)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:  # the process ended while we looked
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if int(fields.get("PPid", "0").strip()) == master_pid:
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total


def memory_per_request(
    gateway_hold_url: str, upstream: str, key: str, master_pid: int, count: int
) -> tuple[float, int]:
    """KiB of worker memory per proxied request held open upstream, with ``count`` of them.

    Opens ``count`` client connections, each sending one GET to the gateway's ``/hold`` (which
    the upstream holds for ``HOLD_SECONDS``), waits until the upstream holds them all (or 60 s
    pass), and compares the workers' RSS then with their RSS just before. Returns (KiB per
    request, requests the upstream held).
    """
    parts = requests.utils.urlparse(gateway_hold_url)
    raw = (
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {key}\r\n\r\n"
    ).encode()
    before = worker_rss_kib(master_pid)
    already = int(requests.get(upstream + "/held", timeout=10).text)
    clients = []
    held = 0
    try:
        for _ in range(count):
            sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
            sock.sendall(raw)
            clients.append(sock)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            held = int(requests.get(upstream + "/held", timeout=10).text) - already
            if held >= count:
                break
            time.sleep(0.2)
        during = worker_rss_kib(master_pid)
    finally:
        for sock in clients:
            sock.close()
    return (during - before) / max(held, 1), held


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
    memory_kib: float | None = None  # per held request, at ``memory_held`` of them
    memory_held: int = 0

    @property
    def direct_rps(self) -> float:
        return statistics.median(r.requests_per_second for r in self.direct)

    @property
    def gateway_rps(self) -> float:
        return statistics.median(r.requests_per_second for r in self.gateway)

    @property
    def gateway_p99(self) -> float | None:
        p99s = [r.p99_ms for r in self.gateway if r.p99_ms is not None]
        return max(p99s) if p99s else None

    @property
    def gateway_errors(self) -> int:
        return sum(r.errors for r in self.gateway)

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


CLASSES = {
    "both": ["sync", "gthread"],
    "all": ["sync", "gthread", "gevent"],
    "sync": ["sync"],
    "gthread": ["gthread"],
    "gevent": ["gevent"],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-class", choices=tuple(CLASSES), default="gevent")
    parser.add_argument("--gthreads", type=int, default=4, help="threads per gthread worker")
    parser.add_argument("--worker-connections", type=int, default=1000, help="per gevent worker")
    parser.add_argument("--threads", type=int, default=2, help="load-generator threads/processes")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per target")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median used)")
    parser.add_argument("--sequential", type=int, default=500, help="requests, one connection")
    parser.add_argument(
        "--upstream-delay", type=float, default=0.0, help="seconds the upstream waits per answer"
    )
    parser.add_argument(
        "--memory-requests",
        type=int,
        default=1000,
        help="slow requests held open for the memory measurement (gevent only; 0: skip)",
    )
    parser.add_argument("--python-client", action="store_true", help="ignore wrk if installed")
    parser.add_argument(
        "--app", default="app:create_app()", help="WSGI app for gunicorn (for experiments)"
    )
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=None,
        help="SWITCHBOARD_RATELIMIT_LEASE_SECONDS for the server (default: the app's default)",
    )
    parser.add_argument("--serve-upstream", metavar="PORT_FILE", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:  # noqa: PLR0915 - one linear script
    args = parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0

    classes = CLASSES[args.worker_class]
    use_wrk = shutil.which("wrk") is not None and not args.python_client
    redis_url, redis_client = flushed_redis(DEFAULT_REDIS_URL)  # only the benchmark's db
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-bench-gateway-"))
    extra = {
        "SWITCHBOARD_ALLOWED_NETWORKS": "127.0.0.0/8",
        "BENCH_UPSTREAM_DELAY": str(args.upstream_delay),
    }
    if args.lease_seconds is not None:
        extra["SWITCHBOARD_RATELIMIT_LEASE_SECONDS"] = str(args.lease_seconds)
    env = bench_env(tmp, redis_url, **extra)
    os.environ.clear()
    os.environ.update(env)  # the in-process setup uses the same settings as gunicorn
    # A slow upstream makes a request last upstream-delay seconds or more: wrk's default 2 s
    # timeout would count the slowest as errors.
    wrk_timeout = max(2.0, 20 * args.upstream_delay)

    def load(url: str, headers: dict[str, str], seconds: float) -> LoadResult:
        if use_wrk:
            return run_wrk(url, headers, args.threads, args.connections, seconds, wrk_timeout)
        return run_load(False, url, headers, args.threads, args.connections, seconds)

    upstream_proc: subprocess.Popen[bytes] | None = None
    results: list[ClassResult] = []
    log_path = tmp / "gunicorn.log"
    try:
        upstream_proc, upstream = start_upstream(tmp)
        key, integration_id = prepare(upstream)
        auth = {"Authorization": f"Bearer {key}"}
        direct_url = upstream + "/ping"
        for worker_class in classes:
            server = gunicorn(
                env,
                worker_class,
                log_path,
                threads=args.gthreads,
                app=args.app,
                worker_connections=args.worker_connections,
            )
            with server as (base, master):
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
                # With a slow upstream a few are enough: the added latency is the fast run's.
                n = args.sequential if not args.upstream_delay else 20
                direct_p50, direct_errors = sequential(direct_url, {}, n)
                gateway_p50, gateway_errors = sequential(gateway_url, auth, n)
                result = ClassResult(
                    worker_class if worker_class != "gthread" else f"gthread x{args.gthreads}",
                    direct,
                    gateway,
                    health,
                    direct_p50,
                    gateway_p50,
                    direct_errors + gateway_errors,
                )
                if worker_class == "gevent" and args.memory_requests > 0:
                    hold_url = f"{base}/api/v1/gateway/{integration_id}/hold"
                    result.memory_kib, result.memory_held = memory_per_request(
                        hold_url, upstream, key, master.pid, args.memory_requests
                    )
            results.append(result)
        log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
    finally:
        if upstream_proc is not None:
            stop_process_group(upstream_proc)
        shutil.rmtree(tmp, ignore_errors=True)
        redis_client.flushdb()
    report(args, use_wrk, redis_url, results)
    return exit_status(log_text, "gunicorn log has tracebacks")


def report(
    args: argparse.Namespace, use_wrk: bool, redis_url: str, results: list[ClassResult]
) -> None:
    """Print the table, then each target with PASS/MISS for the better worker class."""
    generator = (
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s"
        if use_wrk
        else f"Python client ({args.threads} processes, {args.connections} keep-alive "
        f"connections, {args.duration:g}s; slower than wrk: compare only its ratios)"
    )
    lease = (
        "the app's default leases"
        if args.lease_seconds is None
        else (f"leases of {args.lease_seconds:g} s" if args.lease_seconds else "no leases")
    )
    print(
        f"\ngateway: gunicorn -w 2 {args.app!r}, rate limiting ON (key limit 1e8/h, {lease}), "
        f"SQLite, {redis_url}; upstream answers after {args.upstream_delay * 1000:g} ms"
    )
    print(f"load generator: {generator}, {args.rounds} interleaved rounds (median)")
    print(f"sequential: {args.sequential} GETs on one connection (reconnecting when told)\n")
    header = f"{'worker class':<12} {'target':<10} {'req/s':>8} {'rounds':>16} {'p50 load':>9}"
    print(f"{header} {'p99 load':>9} {'p50 seq':>8} {'errors':>6}")
    for res in results:
        for label, runs, seq in (
            ("direct", res.direct, res.direct_seq_p50),
            ("gateway", res.gateway, res.gateway_seq_p50),
            ("health", res.health, None),
        ):
            rates = " ".join(f"{r.requests_per_second:.0f}" for r in runs)
            p50s = [r.p50_ms for r in runs if r.p50_ms is not None]
            p50 = f"{statistics.median(p50s):7.2f}ms" if p50s else "        -"
            p99s = [r.p99_ms for r in runs if r.p99_ms is not None]
            p99 = f"{max(p99s):7.2f}ms" if p99s else "        -"
            errors = sum(r.errors for r in runs)
            median_rps = statistics.median(r.requests_per_second for r in runs)
            shown_seq = f"{seq:6.2f}ms" if seq is not None else "       -"
            print(
                f"{res.name:<12} {label:<10} {median_rps:8.0f} {rates:>16} {p50:>9} {p99:>9} "
                f"{shown_seq} {errors:6d}"
            )
        print(
            f"{res.name:<12} {'gw/direct':<10} {res.ratio:8.3f}   added p50 (sequential) "
            f"{res.added_ms:.2f} ms, sequential errors {res.seq_errors}"
        )
        print(
            f"{res.name:<12} {'gw/health':<10} {res.health_ratio:8.3f}   (health: "
            "the same gunicorn answering GET /api/v1/health, no key, no upstream)"
        )
        if res.memory_kib is not None:
            print(
                f"{res.name:<12} {'memory':<10} {res.memory_kib:8.1f} KiB of worker RSS per "
                f"proxied request held open upstream ({res.memory_held} held at once)"
            )
        print()
    best = max(results, key=lambda r: r.gateway_rps)
    if len(results) > 1:
        print(f"better worker class (gateway req/s): {best.name}")
    if args.upstream_delay > 0:
        verdict = "PASS" if best.ratio >= TARGET_SLOW_RATIO else "MISS"
        print(
            f"[{best.name}] gateway/direct requests/s = {best.ratio:.3f}   "
            f"target >= {TARGET_SLOW_RATIO}   {verdict}"
        )
        verdict = "PASS" if best.gateway_errors == 0 else "MISS"
        print(f"[{best.name}] gateway errors = {best.gateway_errors}   target 0   {verdict}")
        limit = args.upstream_delay * 1000 + TARGET_SLOW_P99_MS
        p99 = best.gateway_p99
        verdict = "PASS" if p99 is not None and p99 <= limit else "MISS"
        direct_p99s = [r.p99_ms for r in best.direct if r.p99_ms is not None]
        direct_p99 = f"{max(direct_p99s):.1f} ms" if direct_p99s else "-"
        print(
            f"[{best.name}] gateway p99 = {p99 if p99 is not None else float('nan'):.1f} ms "
            f"(direct p99 {direct_p99})   target <= {limit:g} ms   {verdict}"
        )
        return
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


if __name__ == "__main__":
    raise SystemExit(main())
