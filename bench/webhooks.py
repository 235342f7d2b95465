"""Webhook delivery: a raw ``requests`` loop vs Switchboard's outbox + RQ workers, side by side.

Usage::

    .venv/bin/python bench/webhooks.py                      # defaults below, ~30-60 s
    .venv/bin/python bench/webhooks.py --events 4000 --rounds 5 --batch 10
    .venv/bin/python bench/webhooks.py --publish api         # one POST /api/v1/events per event
    REDIS_URL=redis://127.0.0.1:6379/8 .venv/bin/python bench/webhooks.py

What it does, all in one run so the numbers compare like with like:

1. starts a fast local receiver in its own process (``ThreadingHTTPServer``, HTTP/1.1 keep-alive,
   one buffered write per response) that counts requests and remembers when each distinct
   ``webhook-id`` first arrived; the same receiver serves every measurement;
2. migrates a throwaway SQLite database in a temp dir, flushes only Redis db 8 (``REDIS_URL``),
   creates an admin key (huge rate limit), a ``github`` webhook integration, a custom event type
   and one webhook to the receiver (all through the app's own API with ``app.test_client()``),
   starts ``--workers`` ``worker.py`` processes and warms them up with 40 deliveries;
3. then ``--rounds`` interleaved rounds (this machine may be shared, so each round measures
   both back to back and the verdict is the median of the per-round ratios), each with:

   - **baseline**: one ``requests.Session`` POSTs the same ~200-byte JSON body ``--events``
     times, one after the other, to the receiver;
   - **Switchboard**: publishes ``--events`` events from this process through the app's own
     code path (``--publish emit``, the default: ``emit_event`` in transactions of ``--batch``
     events; ``--publish api``: one ``POST /api/v1/events`` per event) as fast as it can, and
     waits until the receiver has every distinct ``webhook-id``. Deliveries/s = events /
     (first publish -> last receipt); the publish rate alone is reported too;
   - **backlog drain** (diagnostic, no verdict): the same number of events committed in one
     transaction, timed from the commit to the last receipt, so no publishing competes with
     the workers for the two cores or for SQLite's single write lock;
4. **latency**: publishes ``--latency-events`` events one by one with ``POST /api/v1/events`` at
   ``--latency-rate`` per second; latency = receiver arrival time minus the time the publish
   call started (the publish call's own duration is shown as well).

It prints one table (deliveries/s per round and median, publish rate, drain rate, p50/p90/p99
latency) and the verdicts: Switchboard/baseline deliveries/s (target >= 0.5) and p50
publish->receipt (target <= 50 ms), each with PASS/MISS. Exit status 1 if a worker logged a
traceback. Every child process is killed on exit. Timings are measurements, never test
assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import requests
from harness import (
    ROOT,
    JsonHandler,
    bench_env,
    exit_status,
    flushed_redis,
    prepare_database,
    serve_on_free_port,
    start_server_process,
    stop_process_group,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/8"
EVENT_TYPE = "bench.ping"
TARGET_RATIO = 0.5
TARGET_P50_MS = 50.0


# --- the receiver (runs in its own process) -------------------------------------------------


def serve_receiver(port_file: str) -> None:
    """Run the receiver until killed; write its port to ``port_file`` once listening."""
    lock = threading.Lock()
    state: dict[str, Any] = {"requests": 0, "arrivals": {}}
    reply = b'{"ok":true}'

    class Handler(JsonHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            now = time.time()
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if self.path == "/_bench/reset":
                with lock:
                    state["requests"], state["arrivals"] = 0, {}
            else:
                msg_id = self.headers.get("webhook-id")
                with lock:
                    state["requests"] += 1
                    if msg_id is not None:
                        state["arrivals"].setdefault(msg_id, now)
            self.send_json(reply)

        def do_GET(self) -> None:  # noqa: N802
            with lock:
                if self.path == "/_bench/arrivals":
                    body = json.dumps(state["arrivals"]).encode()
                else:
                    body = json.dumps(
                        {"requests": state["requests"], "distinct": len(state["arrivals"])}
                    ).encode()
            self.send_json(body)

    serve_on_free_port(Handler, port_file)


class ReceiverProcess:
    """The receiver as a child process, with helpers to read what it saw."""

    def __init__(self, tmp: Path) -> None:
        self.proc, self.url = start_server_process(
            __file__, "--serve-receiver", tmp / "receiver.port", "receiver"
        )
        self._http = requests.Session()

    def reset(self) -> None:
        self._http.post(self.url + "/_bench/reset", timeout=5).raise_for_status()

    def stats(self) -> dict[str, int]:
        return self._http.get(self.url + "/_bench/stats", timeout=5).json()

    def arrivals(self) -> dict[str, float]:
        return self._http.get(self.url + "/_bench/arrivals", timeout=30).json()

    def wait_distinct(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats()["distinct"] >= n:
                return True
            time.sleep(0.02)
        return False


# --- child processes ------------------------------------------------------------------------


def start_workers(n: int, env: dict[str, str], tmp: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(n):
        with (tmp / f"worker{i}.log").open("wb") as log_file:
            procs.append(
                subprocess.Popen(  # noqa: S603
                    [sys.executable, str(ROOT / "worker.py"), "--name", f"bench-{os.getpid()}-{i}"],
                    cwd=ROOT,
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # killpg also reaches RQ's scheduler process
                )
            )
    return procs


def wait_for_workers(client: redis.Redis, n: int, timeout: float = 30) -> None:
    from rq import Worker

    deadline = time.monotonic() + timeout
    while len(Worker.all(connection=client)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} RQ workers did not register in {timeout:g}s")
        time.sleep(0.1)


# --- setup ----------------------------------------------------------------------------------


def setup_app(receiver_url: str, webhooks: int = 1) -> tuple[Any, str]:
    """Migrate, create admin key (huge rate limit), integration, event type and ``webhooks``
    webhooks (``/hook0``, ``/hook1``… on the receiver)."""
    from app import create_app

    app = create_app()
    _, key = prepare_database(app)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {key}"}

    def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
        res = client.post(url, json=body, headers=auth)
        if res.status_code not in (200, 201):
            raise RuntimeError(f"POST {url} -> {res.status_code}: {res.get_data(as_text=True)}")
        return res.get_json()

    integration = post(
        "/api/v1/integrations",
        {
            "name": "bench hooks",
            "type": "webhook",
            "provider": "github",
            "config": {"webhook_secret": "x" * 24},
        },
    )
    post("/api/v1/event-types", {"name": EVENT_TYPE, "description": "benchmark event"})
    for n in range(webhooks):
        post(
            "/api/v1/webhooks",
            {
                "url": f"{receiver_url}/hook{n}",
                "events": [EVENT_TYPE],
                "integration_id": integration["id"],
            },
        )
    return app, key


def event_data(i: int) -> dict[str, Any]:
    """Data that makes a delivered body of about 200 bytes."""
    return {"order_id": f"ord_{i:012d}", "amount": 4200, "currency": "EUR", "note": "x" * 64}


def make_publishers(app: Any, key: str) -> tuple[Any, Any, Any]:
    """Publish one event through POST /api/v1/events; a batch with emit_event; a backlog."""
    from app.events.catalog import emit_event
    from app.store.db import database

    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}

    def via_api(i: int) -> str:
        res = client.post(
            "/api/v1/events", json={"type": EVENT_TYPE, "data": event_data(i)}, headers=headers
        )
        if res.status_code != 202:
            raise RuntimeError(f"publish -> {res.status_code}: {res.get_data(as_text=True)}")
        return res.get_json()["id"]

    def via_emit(batch: list[int]) -> list[str]:
        with app.app_context(), database.connection_context():
            with database.atomic():
                events = [emit_event(EVENT_TYPE, event_data(i)) for i in batch]
        return [event.id for event in events]

    def backlog(batch: list[int]) -> tuple[list[str], float]:
        """Emit every event in one transaction; return ids and when it committed (wall)."""
        committed: list[float] = []
        with app.app_context(), database.connection_context():
            with database.atomic():
                # Registered first, so it runs before the events' own wake-ups.
                database.after_commit(lambda: committed.append(time.time()))
                events = [emit_event(EVENT_TYPE, event_data(i)) for i in batch]
        return [event.id for event in events], committed[0]

    return via_api, via_emit, backlog


# --- the measurements -----------------------------------------------------------------------


def run_baseline(url: str, n: int) -> float:
    """Deliveries/s of one requests.Session POSTing the same ~200-byte body ``n`` times."""
    from datetime import datetime

    from app.webhooks.sender import event_body

    body = event_body(EVENT_TYPE, datetime(2025, 1, 1), event_data(0))
    headers = {"Content-Type": "application/json"}
    with requests.Session() as session:
        for _ in range(20):  # warm-up: connection open, code paths hot
            session.post(url, data=body, headers=headers, timeout=10).raise_for_status()
        started = time.perf_counter()
        for _ in range(n):
            response = session.post(url, data=body, headers=headers, timeout=10)
            response.raise_for_status()
        elapsed = time.perf_counter() - started
    return n / elapsed


@dataclass
class Round:
    """One Switchboard throughput round."""

    deliveries_per_second: float  # events / (first publish -> last distinct receipt)
    publish_per_second: float
    total_seconds: float
    publish_seconds: float
    duplicates: int  # receiver requests beyond one per event
    drain_per_second: float  # a committed backlog of n events, from commit to last receipt


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def main() -> int:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events for throughput")
    parser.add_argument("--workers", type=int, default=2, help="worker.py processes")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median used)")
    parser.add_argument("--publish", choices=("emit", "api"), default="emit")
    parser.add_argument("--batch", type=int, default=50, help="events per emit transaction")
    parser.add_argument("--latency-events", type=int, default=200)
    parser.add_argument("--latency-rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--timeout", type=float, default=60, help="max seconds to wait")
    parser.add_argument("--serve-receiver", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_receiver:
        serve_receiver(args.serve_receiver)
        return 0

    redis_url, redis_client = flushed_redis(DEFAULT_REDIS_URL)  # only the benchmark's db
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-bench-webhooks-"))
    env = bench_env(tmp, redis_url, SWITCHBOARD_ALLOWED_NETWORKS="127.0.0.0/8")
    os.environ.clear()
    os.environ.update(env)  # the in-process app (the publisher) reads the same settings

    receiver: ReceiverProcess | None = None
    baseline_rates: list[float] = []
    rounds: list[Round] = []
    workers: list[subprocess.Popen[bytes]] = []
    try:
        receiver = ReceiverProcess(tmp)
        app, key = setup_app(receiver.url)
        via_api, via_emit, backlog = make_publishers(app, key)
        workers = start_workers(args.workers, env, tmp)
        wait_for_workers(redis_client, args.workers)

        # Warm-up: every worker imports, connects and sends before anything is timed.
        for i in range(40):
            via_api(i)
        if not receiver.wait_distinct(40, args.timeout):
            raise RuntimeError("warm-up deliveries did not arrive")
        time.sleep(0.5)

        # Throughput, interleaved rounds (this machine may be shared: medians compare best).
        n = args.events
        for _ in range(args.rounds):
            receiver.reset()
            baseline_rates.append(run_baseline(receiver.url + "/hook", n))
            receiver.reset()
            started_wall = time.time()
            started = time.perf_counter()
            if args.publish == "api":
                for i in range(n):
                    via_api(i)
            else:
                for first in range(0, n, args.batch):
                    via_emit(list(range(first, min(n, first + args.batch))))
            publish_seconds = time.perf_counter() - started
            if not receiver.wait_distinct(n, args.timeout):
                raise RuntimeError(f"only {receiver.stats()} of {n} deliveries arrived")
            arrivals = receiver.arrivals()
            total_seconds = max(arrivals.values()) - started_wall
            duplicates = receiver.stats()["requests"] - n
            time.sleep(0.3)  # let the last job finish its bookkeeping
            # Drain: the same n events committed at once, so no publishing competes with
            # the workers for CPU or SQLite's write lock; timed from the commit.
            receiver.reset()
            _, committed_at = backlog(list(range(n)))
            if not receiver.wait_distinct(n, args.timeout):
                raise RuntimeError(f"only {receiver.stats()} of {n} backlog deliveries arrived")
            drain_seconds = max(receiver.arrivals().values()) - committed_at
            rounds.append(
                Round(
                    n / total_seconds,
                    n / publish_seconds,
                    total_seconds,
                    publish_seconds,
                    duplicates,
                    n / drain_seconds,
                )
            )
            time.sleep(0.3)
        receiver.reset()

        # Latency at a low rate: every event published alone through the API.
        published: dict[str, float] = {}
        call_ms: list[float] = []
        m = args.latency_events
        begin = time.perf_counter()
        for i in range(m):
            delay = begin + i / args.latency_rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            at = time.time()
            published[via_api(i)] = at
            call_ms.append((time.time() - at) * 1000)
        if not receiver.wait_distinct(m, args.timeout):
            raise RuntimeError(f"only {receiver.stats()} of {m} latency deliveries arrived")
        got = receiver.arrivals()
        latencies = [(got[msg] - at) * 1000 for msg, at in published.items()]
    finally:
        for proc in workers:
            stop_process_group(proc)
        if receiver is not None:
            stop_process_group(receiver.proc)
        logs = "".join(p.read_text(errors="replace") for p in tmp.glob("worker*.log"))
        shutil.rmtree(tmp, ignore_errors=True)
        redis_client.flushdb()

    baseline_rate = statistics.median(baseline_rates)
    switchboard_rate = statistics.median(r.deliveries_per_second for r in rounds)
    # Each round measures both back to back, so the median of the per-round ratios is the
    # verdict: it resists other load on the machine drifting between rounds.
    round_ratios = [
        r.deliveries_per_second / b for r, b in zip(rounds, baseline_rates, strict=True)
    ]
    ratio = statistics.median(round_ratios)
    p50 = percentile(latencies, 50)
    publisher = (
        f"emit_event, {args.batch} events per transaction"
        if args.publish == "emit"
        else "POST /api/v1/events via app.test_client()"
    )
    print(
        f"\nwebhook delivery: {n} events of ~200 bytes x {args.rounds} interleaved rounds "
        f"(median), SQLite, {redis_url}"
    )
    print(
        f"Switchboard: {args.workers} worker.py processes; publisher in this process ({publisher})"
    )
    print("baseline: one requests.Session POSTing sequentially to the same receiver (no wrk)\n")

    def row(label: str, values: list[float], fmt: str = "{:.0f}") -> None:
        shown = " ".join(fmt.format(v) for v in values)
        print(f"{label:<46} {fmt.format(statistics.median(values)):>9}   {shown}")

    print(f"{'throughput':<46} {'median':>9}   rounds")
    row("baseline deliveries/s", baseline_rates)
    row("Switchboard deliveries/s (1st publish->last)", [r.deliveries_per_second for r in rounds])
    row("  publish rate alone, events/s", [r.publish_per_second for r in rounds])
    row("  seconds to publish", [r.publish_seconds for r in rounds], "{:.2f}")
    row("  seconds to last receipt", [r.total_seconds for r in rounds], "{:.2f}")
    row("  duplicate deliveries", [float(r.duplicates) for r in rounds])
    row("Switchboard/baseline, per round", round_ratios, "{:.3f}")
    row("backlog drain deliveries/s (no publishing)", [r.drain_per_second for r in rounds])
    row(
        "  drain/baseline, per round",
        [r.drain_per_second / b for r, b in zip(rounds, baseline_rates, strict=True)],
        "{:.3f}",
    )
    print(
        f"\nlatency: {m} events published one by one via POST /api/v1/events at "
        f"{args.latency_rate:g}/s (receiver arrival - publish call start)"
    )
    for q in (50, 90, 99):
        print(f"  p{q:<3} {percentile(latencies, q):8.1f} ms")
    print(f"  max  {max(latencies):8.1f} ms")
    print(f"  (of which the publish call itself, p50 {percentile(call_ms, 50):.1f} ms)\n")
    verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
    print(
        f"Switchboard/baseline deliveries/s = {ratio:.3f} (median of rounds; ratio of medians "
        f"{switchboard_rate / baseline_rate:.3f})   target >= {TARGET_RATIO}   {verdict}"
    )
    verdict = "PASS" if p50 <= TARGET_P50_MS else "MISS"
    print(f"p50 publish->receipt = {p50:.1f} ms   target <= {TARGET_P50_MS:g} ms   {verdict}")
    return exit_status(logs, "worker logs have tracebacks")


if __name__ == "__main__":
    raise SystemExit(main())
