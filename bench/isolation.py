"""Isolation: healthy webhooks' publish->receipt latency with and without one slow endpoint.

Usage::

    .venv/bin/python bench/isolation.py                    # 60 s without, 300 s with, ~7 min
    .venv/bin/python bench/isolation.py --job-seconds 10 --seconds 60 --window 10   # ~2 min
    .venv/bin/python bench/isolation.py --database-url postgresql://postgres@127.0.0.1/bench
    REDIS_URL=redis://127.0.0.1:6379/8 .venv/bin/python bench/isolation.py

What it does, in one run so the numbers compare like with like:

1. starts a local receiver in its own process: ``/hook/<n>`` answers at once and records when
   each (path, ``webhook-id``) arrived; ``/slow`` sleeps ``--slow-seconds`` (30) before answering;
2. migrates a throwaway database (SQLite, or ``--database-url``), creates ``--healthy`` (3)
   webhooks to ``/hook/<n>`` and one webhook to ``/slow`` with ``timeout_ms`` 2000 (all on the
   same event type; the slow one starts disabled and never auto-disables), starts
   ``--workers`` ``worker.py`` processes;
3. **without**: publishes via ``POST /api/v1/events`` at ``--rate`` per second for
   ``--baseline-seconds`` and measures, per healthy delivery, receiver arrival - publish start;
4. **with**: enables the slow webhook (every event now also goes to the sleeping endpoint,
   which times out after 2 s and is retried) and measures the same for ``--seconds``: by
   default five lifetimes of a dispatcher job (``SWITCHBOARD_DISPATCH_JOB_SECONDS``, 60 s,
   or ``--job-seconds``), which is what a stall of dispatchers at the end of a job needs to show.

It prints p50/p90/p99 of both phases with the with/without ratios (1.0 = a slow endpoint
costs healthy webhooks nothing), then one row per ``--window`` seconds of the "with" phase
(by publish time): deliveries, p50, p99, and p50 over the "without" p50 — a stall shows as a
row with a large ratio, or deliveries still missing after ``--timeout``. Exit status 1 if a
worker logged a traceback. Timings are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from harness import (
    JsonHandler,
    bench_env,
    exit_status,
    flushed_redis,
    fresh_database,
    prepare_database,
    serve_on_free_port,
    start_server_process,
    stop_process_group,
)
from webhooks import percentile, start_workers, wait_for_workers

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/8"
EVENT_TYPE = "bench.isolation"


def serve_receiver(port_file: str, slow_seconds: float) -> None:
    """Run the receiver until killed; write its port to ``port_file`` once listening."""
    lock = threading.Lock()
    arrivals: dict[str, float] = {}

    class Handler(JsonHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            now = time.time()
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if self.path == "/slow":
                time.sleep(slow_seconds)
            elif self.path == "/_bench/reset":
                with lock:
                    arrivals.clear()
            else:
                with lock:
                    arrivals.setdefault(f"{self.path} {self.headers.get('webhook-id')}", now)
            try:
                self.send_json(b'{"ok":true}')
            except OSError:  # the slow path's caller gave up long ago
                pass

        def do_GET(self) -> None:  # noqa: N802
            with lock:
                body = json.dumps(arrivals).encode()
            self.send_json(body)

    serve_on_free_port(Handler, port_file)


def setup_app(receiver_url: str, healthy: int) -> tuple[Any, str, Callable[[], None]]:
    """Migrate; create the key, integration, event type, healthy webhooks and the slow one
    (disabled); return the app, the key and a function that enables the slow one."""
    from app import create_app

    app = create_app()
    _, key = prepare_database(app)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {key}"}

    def call(method: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
        res = client.open(url, method=method, json=body, headers=auth)
        if res.status_code not in (200, 201):
            raise RuntimeError(f"{method} {url} -> {res.status_code}: {res.get_data(as_text=True)}")
        return res.get_json()

    integration = call(
        "POST",
        "/api/v1/integrations",
        {
            "name": "bench hooks",
            "type": "webhook",
            "provider": "github",
            "config": {"webhook_secret": "x" * 24},
        },
    )
    call("POST", "/api/v1/event-types", {"name": EVENT_TYPE, "description": "benchmark event"})
    hook = {"events": [EVENT_TYPE], "integration_id": integration["id"]}
    for n in range(healthy):
        call("POST", "/api/v1/webhooks", {**hook, "url": f"{receiver_url}/hook/{n}"})
    slow = call(
        "POST", "/api/v1/webhooks", {**hook, "url": f"{receiver_url}/slow", "timeout_ms": 2000}
    )
    call("PATCH", f"/api/v1/webhooks/{slow['id']}", {"status": "disabled"})

    def enable_slow() -> None:
        call("PATCH", f"/api/v1/webhooks/{slow['id']}", {"status": "active"})

    return app, key, enable_slow


def measure(
    app: Any, key: str, receiver_url: str, healthy: int, rate: float, seconds: float, timeout: float
) -> list[tuple[float, float | None]]:
    """Publish at ``rate``/s for ``seconds``; return (seconds since the phase began at publish,
    publish->receipt ms or None if it had not arrived after ``timeout``) per healthy delivery."""
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    http = requests.Session()
    http.post(receiver_url + "/_bench/reset", timeout=5).raise_for_status()
    published: dict[str, float] = {}
    begin_wall, begin = time.time(), time.perf_counter()
    i = 0
    while (elapsed := time.perf_counter() - begin) < seconds:
        delay = i / rate - elapsed
        if delay > 0:
            time.sleep(delay)
        at = time.time()
        res = client.post(
            "/api/v1/events", json={"type": EVENT_TYPE, "data": {"i": i}}, headers=headers
        )
        if res.status_code != 202:
            raise RuntimeError(f"publish -> {res.status_code}: {res.get_data(as_text=True)}")
        published[res.get_json()["id"]] = at
        i += 1
    wanted = {f"/hook/{n} {msg}" for msg in published for n in range(healthy)}
    deadline = time.monotonic() + timeout
    while True:
        got = http.get(receiver_url + "/_bench/arrivals", timeout=30).json()
        if wanted <= got.keys() or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    results = []
    for k in wanted:
        at = published[k.split(" ")[1]]
        latency = (got[k] - at) * 1000 if k in got else None
        results.append((at - begin_wall, latency))
    return results


def arrived(results: list[tuple[float, float | None]]) -> list[float]:
    return [latency for _, latency in results if latency is not None]


def print_windows(
    results: list[tuple[float, float | None]], window: float, baseline_p50: float
) -> None:
    """One row per ``window`` seconds of publishing: how that window's deliveries fared."""
    print(f"'with slow', by publish time ({window:g} s rows; ratio = p50 / 'without' p50)")
    print(f"  {'from':>6} {'deliveries':>10} {'missing':>8} {'p50':>10} {'p99':>10} {'ratio':>7}")
    rows: dict[int, list[float | None]] = {}
    for offset, latency in results:
        rows.setdefault(int(offset // window), []).append(latency)
    for row in sorted(rows):
        latencies = [x for x in rows[row] if x is not None]
        missing = len(rows[row]) - len(latencies)
        if latencies:
            p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
            ratio = f"{p50 / baseline_p50:7.2f}"
            flag = "  <- over 1.5x" if p50 > 1.5 * baseline_p50 or missing else ""
            cells = f"{p50:8.1f}ms {p99:8.1f}ms {ratio}"
        else:
            cells, flag = f"{'-':>10} {'-':>10} {'-':>7}", "  <- nothing arrived"
        start = f"{row * window:g}s"
        print(f"  {start:>6} {len(rows[row]):>10} {missing:>8} {cells}{flag}")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--baseline-seconds", type=float, default=60, help="'without' phase")
    parser.add_argument(
        "--seconds", type=float, default=300, help="'with slow' phase (five job lifetimes)"
    )
    parser.add_argument("--window", type=float, default=60, help="seconds per printed row")
    parser.add_argument("--job-seconds", help="SWITCHBOARD_DISPATCH_JOB_SECONDS for the workers")
    parser.add_argument("--database-url", help="default: a throwaway SQLite file")
    parser.add_argument("--healthy", type=int, default=3, help="healthy webhooks")
    parser.add_argument("--workers", type=int, default=2, help="worker.py processes")
    parser.add_argument("--slow-seconds", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=180, help="max seconds to wait")
    parser.add_argument("--serve-receiver", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_receiver:  # the child process: its sleep comes from the parent's environment
        serve_receiver(args.serve_receiver, float(os.environ["BENCH_SLOW_SECONDS"]))
        return 0

    redis_url, redis_client = flushed_redis(DEFAULT_REDIS_URL)  # only the benchmark's db
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-bench-isolation-"))
    extra = {"SWITCHBOARD_DISPATCH_JOB_SECONDS": args.job_seconds} if args.job_seconds else {}
    if args.database_url:
        extra["DATABASE_URL"] = args.database_url
        fresh_database(args.database_url)
    env = bench_env(
        tmp,
        redis_url,
        SWITCHBOARD_ALLOWED_NETWORKS="127.0.0.0/8",
        SWITCHBOARD_WEBHOOK_DISABLE_AFTER="1000000",  # the slow endpoint stays in the run
        SWITCHBOARD_ACCESS_LOG="false",
        **extra,
    )
    job_seconds = float(args.job_seconds or 60)
    os.environ.clear()
    os.environ.update(env)  # the in-process app (the publisher) reads the same settings
    os.environ["BENCH_SLOW_SECONDS"] = str(args.slow_seconds)
    receiver = None
    workers = []
    try:
        port_file = tmp / "receiver.port"
        receiver = start_server_process(__file__, "--serve-receiver", port_file, "receiver")[0]
        url = f"http://127.0.0.1:{port_file.read_text()}"
        app, key, enable_slow = setup_app(url, args.healthy)
        workers = start_workers(args.workers, env, tmp)
        wait_for_workers(redis_client, args.workers)
        measure(app, key, url, args.healthy, args.rate, 1, args.timeout)  # warm-up
        without = measure(
            app, key, url, args.healthy, args.rate, args.baseline_seconds, args.timeout
        )
        enable_slow()
        with_slow = measure(app, key, url, args.healthy, args.rate, args.seconds, args.timeout)
    finally:
        for proc in workers:
            stop_process_group(proc)
        if receiver is not None:
            stop_process_group(receiver)
        logs = "".join(p.read_text(errors="replace") for p in tmp.glob("worker*.log"))
        shutil.rmtree(tmp, ignore_errors=True)
        redis_client.flushdb()

    database = "PostgreSQL" if args.database_url else "SQLite"
    print(
        f"\nisolation: {args.rate:g} events/s via POST /api/v1/events, {args.baseline_seconds:g} s"
        f" without and {args.seconds:g} s with the slow endpoint ({args.seconds / job_seconds:.1f}"
        f" dispatcher job lifetimes of {job_seconds:g} s), {args.healthy} healthy webhooks,"
        f" {args.workers} worker.py processes, {database}, {redis_url}"
    )
    print(
        f"'with slow': one more webhook on every event, its endpoint sleeping "
        f"{args.slow_seconds:g} s (timeout_ms 2000, retried)\n"
    )
    base, slow = arrived(without), arrived(with_slow)
    print(f"{'healthy publish->receipt':<26} {'without':>10} {'with slow':>10} {'ratio':>7}")
    for q in (50, 90, 99):
        a, b = percentile(base, q), percentile(slow, q)
        print(f"  p{q:<23} {a:8.1f}ms {b:8.1f}ms {b / a:7.2f}")
    a, b = max(base), max(slow)
    print(f"  {'max':<24} {a:8.1f}ms {b:8.1f}ms {b / a:7.2f}")
    print(f"  {'missing':<24} {len(without) - len(base):>10} {len(with_slow) - len(slow):>10}\n")
    print_windows(with_slow, args.window, percentile(base, 50))
    return exit_status(logs, "worker logs have tracebacks")


if __name__ == "__main__":
    sys.exit(main())
