"""Isolation: healthy webhooks' publish->receipt latency with and without one slow endpoint.

Usage::

    .venv/bin/python bench/isolation.py                     # defaults below, ~1-2 min
    .venv/bin/python bench/isolation.py --events 300 --rate 20 --workers 2
    REDIS_URL=redis://127.0.0.1:6379/8 .venv/bin/python bench/isolation.py

What it does, in one run so the numbers compare like with like:

1. starts a local receiver in its own process: ``/hook/<n>`` answers at once and records when
   each (path, ``webhook-id``) arrived; ``/slow`` sleeps ``--slow-seconds`` (30) before answering;
2. migrates a throwaway SQLite database, creates ``--healthy`` (3) webhooks to ``/hook/<n>`` and
   one webhook to ``/slow`` with ``timeout_ms`` 2000 (all on the same event type; the slow one
   starts disabled and never auto-disables), starts ``--workers`` ``worker.py`` processes;
3. **without**: publishes ``--events`` events one by one via ``POST /api/v1/events`` at
   ``--rate`` per second and measures, per healthy delivery, receiver arrival - publish start;
4. **with**: enables the slow webhook (every event now also goes to the sleeping endpoint,
   which times out after 2 s and is retried) and measures the same again.

It prints p50/p90/p99 of both phases and the with/without ratios (1.0 = a slow endpoint costs
healthy webhooks nothing). Exit status 1 if a worker logged a traceback. Timings are
measurements, never test assertions.
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


def measure(app: Any, key: str, receiver_url: str, healthy: int, args: Any) -> list[float]:
    """Publish ``args.events`` events at ``args.rate``/s; return healthy publish->receipt ms."""
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    http = requests.Session()
    http.post(receiver_url + "/_bench/reset", timeout=5).raise_for_status()
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
    wanted = {f"/hook/{n} {msg}" for msg in published for n in range(healthy)}
    deadline = time.monotonic() + args.timeout
    while True:
        got = http.get(receiver_url + "/_bench/arrivals", timeout=30).json()
        if wanted <= got.keys():
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(wanted & got.keys())} of {len(wanted)} arrived")
        time.sleep(0.2)
    return [(got[k] - published[k.split(" ")[1]]) * 1000 for k in wanted]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200, help="events per phase")
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
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
    env = bench_env(
        tmp,
        redis_url,
        SWITCHBOARD_ALLOWED_NETWORKS="127.0.0.0/8",
        SWITCHBOARD_WEBHOOK_DISABLE_AFTER="1000000",  # the slow endpoint stays in the run
    )
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
        measure(app, key, url, args.healthy, argparse.Namespace(**{**vars(args), "events": 20}))
        without = measure(app, key, url, args.healthy, args)
        enable_slow()
        with_slow = measure(app, key, url, args.healthy, args)
    finally:
        for proc in workers:
            stop_process_group(proc)
        if receiver is not None:
            stop_process_group(receiver)
        logs = "".join(p.read_text(errors="replace") for p in tmp.glob("worker*.log"))
        shutil.rmtree(tmp, ignore_errors=True)
        redis_client.flushdb()

    print(
        f"\nisolation: {args.events} events per phase at {args.rate:g}/s via POST /api/v1/events, "
        f"{args.healthy} healthy webhooks, {args.workers} worker.py processes, SQLite, {redis_url}"
    )
    print(
        f"'with slow': one more webhook on every event, its endpoint sleeping "
        f"{args.slow_seconds:g} s (timeout_ms 2000, retried)\n"
    )
    print(f"{'healthy publish->receipt':<26} {'without':>10} {'with slow':>10} {'ratio':>7}")
    for q in (50, 90, 99):
        a, b = percentile(without, q), percentile(with_slow, q)
        print(f"  p{q:<23} {a:8.1f}ms {b:8.1f}ms {b / a:7.2f}")
    a, b = max(without), max(with_slow)
    print(f"  {'max':<24} {a:8.1f}ms {b:8.1f}ms {b / a:7.2f}\n")
    return exit_status(logs, "worker logs have tracebacks")


if __name__ == "__main__":
    sys.exit(main())
