"""Fair delivery across tenants: a small tenant's latency while a big one drains a backlog.

Usage::

    .venv/bin/python bench/fairness.py                       # ~2 minutes
    .venv/bin/python bench/fairness.py --backlog 20000 --events 200 --workers 2
    .venv/bin/python bench/fairness.py --database-url postgresql://postgres@127.0.0.1/bench

What it does, in one run so the numbers compare like with like:

1. starts a local receiver in its own process: ``/slow`` answers after ``--slow-ms`` (200) and
   ``/fast`` at once; it records when each (path, ``webhook-id``) arrived;
2. migrates a throwaway database (SQLite, or ``--database-url``), creates tenants A and B
   through ``POST /api/v1/tenants`` and, in each, a webhook: A's to ``/slow``, B's to
   ``/fast``; starts ``--workers`` ``worker.py`` processes;
3. **B alone**: B publishes ``--events`` events through ``POST /api/v1/events`` at ``--rate``
   per second; B's publish->receipt latency is measured;
4. **B beside A's backlog**: A's ``--backlog`` events are written to its outbox at once (in
   bulk transactions: the backlog is the point, not how it was published), then B publishes
   exactly as in step 3 while A's deliveries drain at 200 ms each.

It prints B's p50/p90/p99 alone and beside A, the ratios (target: p50 within 2x), and how
far A's backlog had drained when B finished. Exit status 1 if a worker logged a traceback.
Timings are measurements, never test assertions.
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
EVENT_TYPE = "bench.fairness"


def serve_receiver(port_file: str, slow_seconds: float) -> None:
    """Run the receiver until killed; write its port to ``port_file`` once listening."""
    lock = threading.Lock()
    arrivals: dict[str, float] = {}
    counts = {"/slow": 0}

    class Handler(JsonHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            now = time.time()
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if self.path == "/slow":
                time.sleep(slow_seconds)
                with lock:
                    counts["/slow"] += 1
            elif self.path == "/_bench/reset":
                with lock:
                    arrivals.clear()
            else:
                with lock:
                    arrivals.setdefault(f"{self.path} {self.headers.get('webhook-id')}", now)
            self.send_json(b'{"ok":true}')

        def do_GET(self) -> None:  # noqa: N802
            with lock:
                body = json.dumps({"arrivals": arrivals, "slow": counts["/slow"]}).encode()
            self.send_json(body)

    serve_on_free_port(Handler, port_file)


def setup(receiver_url: str) -> tuple[Any, str, dict[str, str]]:
    """Migrate; create tenants A and B, each with a webhook; return the app, the platform key
    and the tenants' ids."""
    from app import create_app

    app = create_app()
    _, key = prepare_database(app)
    client = app.test_client()

    def call(path: str, body: dict[str, Any], tenant: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {key}"}
        if tenant:
            headers["Switchboard-Tenant"] = tenant
        res = client.post(path, json=body, headers=headers)
        if res.status_code != 201:
            raise RuntimeError(f"POST {path} -> {res.status_code}: {res.get_data(as_text=True)}")
        return res.get_json()

    tenants = {}
    for name, target in (("a", "/slow"), ("b", "/fast")):
        tenant = call("/api/v1/tenants", {"name": f"tenant {name}", "external_id": f"bench-{name}"})
        tenants[name] = tenant["id"]
        integration = call(
            "/api/v1/integrations",
            {
                "name": "hooks",
                "type": "webhook",
                "provider": "github",
                "config": {"webhook_secret": "x" * 24},
            },
            tenant["id"],
        )
        call("/api/v1/event-types", {"name": EVENT_TYPE}, tenant["id"])
        call(
            "/api/v1/webhooks",
            {
                "url": receiver_url + target,
                "events": [EVENT_TYPE],
                "integration_id": integration["id"],
                "timeout_ms": 10000,
            },
            tenant["id"],
        )
    return app, key, tenants


def write_backlog(app: Any, tenant_id: str, count: int) -> float:
    """Write ``count`` events of ``tenant_id`` (and their deliveries) to the outbox; seconds."""
    from app.events.catalog import emit_event
    from app.store.db import database

    started = time.perf_counter()
    with app.app_context(), database.connection_context():
        for first in range(0, count, 500):
            with database.atomic():
                for n in range(first, min(count, first + 500)):
                    emit_event(EVENT_TYPE, {"n": n}, tenant_id=tenant_id)
    return time.perf_counter() - started


def measure_b(app: Any, key: str, tenant_id: str, url: str, args: Any) -> list[float]:
    """B publishes ``args.events`` at ``args.rate``/s; return publish->receipt ms of each."""
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}", "Switchboard-Tenant": tenant_id}
    http = requests.Session()
    http.post(url + "/_bench/reset", timeout=5).raise_for_status()
    published: dict[str, float] = {}
    begin = time.perf_counter()
    for i in range(args.events):
        delay = begin + i / args.rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        at = time.time()
        res = client.post(
            "/api/v1/events", json={"type": EVENT_TYPE, "data": {"i": i}}, headers=headers
        )
        if res.status_code != 202:
            raise RuntimeError(f"publish -> {res.status_code}: {res.get_data(as_text=True)}")
        published[res.get_json()["id"]] = at
    wanted = {f"/fast {msg}" for msg in published}
    deadline = time.monotonic() + args.timeout
    while True:
        got = http.get(url + "/_bench/arrivals", timeout=30).json()["arrivals"]
        if wanted <= got.keys():
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(wanted & got.keys())} of {len(wanted)} of B arrived")
        time.sleep(0.1)
    return [(got[k] - published[k.split(" ")[1]]) * 1000 for k in wanted]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=20000, help="tenant A's events")
    parser.add_argument("--events", type=int, default=200, help="tenant B's events per phase")
    parser.add_argument("--rate", type=float, default=20.0, help="B's events per second")
    parser.add_argument("--slow-ms", type=float, default=200.0, help="A's receiver latency")
    parser.add_argument("--workers", type=int, default=2, help="worker.py processes")
    parser.add_argument("--database-url", help="default: a throwaway SQLite file")
    parser.add_argument("--timeout", type=float, default=120, help="max seconds to wait")
    parser.add_argument("--serve-receiver", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_receiver:
        serve_receiver(args.serve_receiver, float(os.environ["BENCH_SLOW_SECONDS"]))
        return 0

    redis_url, redis_client = flushed_redis(DEFAULT_REDIS_URL)
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-bench-fairness-"))
    extra = {"SWITCHBOARD_ACCESS_LOG": "false", "SWITCHBOARD_ALLOWED_NETWORKS": "127.0.0.0/8"}
    if args.database_url:
        fresh_database(args.database_url)
        extra["DATABASE_URL"] = args.database_url
    env = bench_env(tmp, redis_url, **extra)
    os.environ.clear()
    os.environ.update(env)
    os.environ["BENCH_SLOW_SECONDS"] = str(args.slow_ms / 1000)
    receiver, workers = None, []
    try:
        port_file = tmp / "receiver.port"
        receiver = start_server_process(__file__, "--serve-receiver", port_file, "receiver")[0]
        url = f"http://127.0.0.1:{port_file.read_text()}"
        app, key, tenants = setup(url)
        workers = start_workers(args.workers, env, tmp)
        wait_for_workers(redis_client, args.workers)
        measure_b(app, key, tenants["b"], url, argparse.Namespace(**{**vars(args), "events": 20}))
        alone = measure_b(app, key, tenants["b"], url, args)
        wrote = write_backlog(app, tenants["a"], args.backlog)
        beside = measure_b(app, key, tenants["b"], url, args)
        drained = requests.get(url + "/_bench/arrivals", timeout=30).json()["slow"]
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
        f"\nfairness: tenant B publishes {args.events} events at {args.rate:g}/s via the API to a "
        f"fast receiver, alone and then beside tenant A's backlog of {args.backlog} events "
        f"(written in {wrote:.1f} s) to a receiver answering in {args.slow_ms:g} ms; "
        f"{args.workers} worker.py processes, {database}, {redis_url}"
    )
    print(f"A's deliveries done when B's last one arrived: {drained} of {args.backlog}\n")
    print(f"{'B publish->receipt':<22} {'alone':>10} {'beside A':>10} {'ratio':>7}")
    for q in (50, 90, 99):
        a, b = percentile(alone, q), percentile(beside, q)
        print(f"  p{q:<19} {a:8.1f}ms {b:8.1f}ms {b / a:7.2f}")
    ratio = percentile(beside, 50) / percentile(alone, 50)
    verdict = "PASS" if ratio <= 2 else "MISS"
    print(f"\nB's p50 beside A / alone: {ratio:.2f} (target <= 2): {verdict}")
    return exit_status(logs, "worker logs have tracebacks")


if __name__ == "__main__":
    sys.exit(main())
