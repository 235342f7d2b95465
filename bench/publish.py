"""Publish throughput on PostgreSQL: 2 gunicorn API processes + N workers, 3 webhooks per event.

Usage::

    .venv/bin/python bench/publish.py                          # ~1 minute
    .venv/bin/python bench/publish.py --workers 3 --duration 10 --connections 32
    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/other .venv/bin/python bench/publish.py

What it does:

1. creates (if missing) and empties the PostgreSQL database ``BENCH_DATABASE_URL`` (default
   ``postgresql://postgres@127.0.0.1:5432/switchboard_bench``), flushes only Redis db 7
   (``REDIS_URL``), migrates, and creates an admin key, a custom event type and three webhooks to
   one local receiver (the fast receiver of ``bench/webhooks.py``, in its own process);
2. starts ``gunicorn -w 2 -k gthread`` and ``--workers`` ``worker.py`` processes;
3. **saturation**: ``wrk`` (with a Lua script for the POST; a multi-threaded Python client when
   wrk is missing) publishes ``POST /api/v1/events`` as fast as the API takes them for
   ``--duration`` seconds, then waits until the receiver has every delivery (3 per accepted
   event). Events/s = accepted events / (first publish -> last delivery);
4. **latency**: publishes one event at a time at ``--latency-rate`` per second for
   ``--latency-events`` events; latency = first arrival of the event at the receiver minus the
   start of its publish call;
5. prints events/s (target >= 500) and p50 publish->receipt (target <= 50 ms) with PASS/MISS,
   and the CPU each component used per event during the saturation phase (from Linux
   ``/proc``: the gunicorn workers, the ``worker.py`` processes with their children, the
   receiver, and this database's PostgreSQL backends), with the cores that many milliseconds
   would take at the target rate. CPU per event barely moves when other jobs share the
   machine, unlike events/s: it is the figure that says whether the target fits two cores.

Timings are measurements, never test assertions. Every child process is killed on exit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from harness import (
    bench_env,
    exit_status,
    flushed_redis,
    fresh_database,
    gunicorn,
    postgres_backend_pids,
    server_cpu_seconds,
    stop_process_group,
    tree_cpu_seconds,
)
from webhooks import EVENT_TYPE, ReceiverProcess, setup_app, start_workers, wait_for_workers

from app.store.db import database

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/switchboard_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/7"
WEBHOOKS = 3
TARGET_EVENTS_PER_SECOND = 500
TARGET_P50_MS = 50.0
BODY = json.dumps(
    {"type": EVENT_TYPE, "data": {"order_id": "ord_000000000001", "amount": 4200, "note": "x" * 64}}
)


_WRK_REQUESTS = re.compile(r"(\d+) requests in")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def saturate_wrk(base: str, key: str, tmp: Path, seconds: float, connections: int) -> int:
    """POST events with wrk for ``seconds``; return how many the API accepted (202)."""
    script = tmp / "publish.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(BODY)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    output = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "-s",
            str(script),
            base + "/api/v1/events",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = int(_WRK_REQUESTS.search(output).group(1))  # type: ignore[union-attr]
    refused = int(m.group(1)) if (m := _WRK_NON2XX.search(output)) else 0
    if m := _WRK_SOCKET.search(output):
        refused += int(m.group(4))  # a timed-out request may or may not have been accepted
    return total - refused


def saturate_python(base: str, key: str, seconds: float, connections: int) -> int:
    """The same with ``connections`` threads, one keep-alive connection each."""
    parts = urlsplit(base)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + seconds
    accepted = [0] * connections

    def loop(i: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        while time.monotonic() < deadline:
            conn.request("POST", "/api/v1/events", body=BODY, headers=headers)
            response = conn.getresponse()
            response.read()
            accepted[i] += response.status == 202
        conn.close()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(accepted)


class CpuMeter:
    """CPU seconds each component of the pipeline used between ``start`` and ``stop``."""

    def __init__(self, api_master: int, workers: list[int], receiver: int, database_url: str):
        self.api_master, self.workers, self.receiver = api_master, workers, receiver
        self.database_url = database_url
        self.used: dict[str, float | None] = {}

    def _read(self) -> dict[str, float | None]:
        postgres = tree_cpu_seconds(postgres_backend_pids(self.database_url))
        return {
            "API (gunicorn workers)": server_cpu_seconds(self.api_master),
            "workers (worker.py)": tree_cpu_seconds(self.workers),
            "receiver": tree_cpu_seconds([self.receiver]),
            "PostgreSQL backends": postgres,
        }

    def start(self) -> None:
        self._before = self._read()

    def stop(self) -> None:
        after = self._read()
        self.used = {
            name: (after[name] - before if (before := self._before[name]) is not None else None)
            if after[name] is not None
            else None
            for name in after
        }

    def report(self, events: int, target_rate: float) -> None:
        """Print CPU ms per event per component and the cores that would take at the target."""
        if not events or not self.used:
            return
        print(f"CPU per event (saturation phase, {events} events; Linux /proc):")
        total = 0.0
        for name, seconds in self.used.items():
            if seconds is None:
                print(f"  {name:26s}      -")
                continue
            ms = seconds * 1000 / events
            total += ms
            print(
                f"  {name:26s} {ms:6.2f} ms  x {target_rate:g} ev/s = "
                f"{ms * target_rate / 1000:4.2f} cores"
            )
        print(
            f"  {'total':26s} {total:6.2f} ms  x {target_rate:g} ev/s = "
            f"{total * target_rate / 1000:4.2f} cores (this machine has {os.cpu_count()}; "
            f"the load generator and Redis come on top)"
        )


def start_profilers(
    folder: Path | None,
    api_master: int,
    workers: list[subprocess.Popen[bytes]],
    receiver: ReceiverProcess,
    seconds: float,
) -> list[subprocess.Popen[bytes]]:
    """``py-spy record`` (raw collapsed stacks of the thread holding the GIL: Python's CPU) on
    each process for
    ``seconds`` plus a few for the deliveries to drain; nothing when ``folder`` is None."""
    if folder is None:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).parent / "py-spy"
    api = [
        int(p) for p in Path(f"/proc/{api_master}/task/{api_master}/children").read_text().split()
    ]
    targets = [(f"api-{pid}", pid) for pid in api]
    targets += [(f"worker-{proc.pid}", proc.pid) for proc in workers]
    targets += [("receiver", receiver.proc.pid)]
    return [
        subprocess.Popen(
            [
                str(py_spy),
                "record",
                "--gil",
                "--format",
                "raw",
                "--rate",
                "200",
                "--duration",
                str(int(seconds) + 3),
                "--pid",
                str(pid),
                "-o",
                str(folder / f"{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in targets
    ]


def wait_requests(receiver: ReceiverProcess, n: int, timeout: float) -> float | None:
    """Wall time when the receiver had ``n`` requests, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if receiver.stats()["requests"] >= n:
            return time.time()
        time.sleep(0.01)
    return None


def latency(base: str, key: str, receiver: ReceiverProcess, n: int, rate: float) -> list[float]:
    """Publish ``n`` events one at a time at ``rate``/s; ms from publish start to first arrival."""
    parts = urlsplit(base)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    started: dict[str, float] = {}
    for _ in range(n):
        due = time.monotonic() + 1 / rate
        begin = time.time()
        conn.request("POST", "/api/v1/events", body=BODY, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        if response.status == 202:
            started[json.loads(payload)["id"]] = begin
        time.sleep(max(0.0, due - time.monotonic()))
    conn.close()
    receiver.wait_distinct(len(started), timeout=60)
    arrivals = receiver.arrivals()
    return [(arrivals[eid] - t) * 1000 for eid, t in started.items() if eid in arrivals]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3, help="worker.py processes")
    parser.add_argument("--duration", type=float, default=10, help="seconds of saturation")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--latency-events", type=int, default=200)
    parser.add_argument("--latency-rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--python-client", action="store_true", help="ignore wrk")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy record every API worker, worker.py and the receiver during the saturation "
        "phase into DIR (collapsed stacks, one file per process; needs py-spy and ptrace rights)",
    )
    args = parser.parse_args()

    database_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    fresh_database(database_url)
    redis_url, _ = flushed_redis(DEFAULT_REDIS_URL)
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-bench-publish-"))
    receiver = ReceiverProcess(tmp)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        env = bench_env(tmp, redis_url, SWITCHBOARD_ALLOWED_NETWORKS="127.0.0.0/8")
        env["DATABASE_URL"] = database_url
        os.environ.update(env)
        app, key = setup_app(receiver.url, webhooks=WEBHOOKS)
        with app.app_context():
            database.close()
        workers = start_workers(args.workers, env, tmp)
        import redis

        wait_for_workers(redis.Redis.from_url(redis_url), args.workers)
        with gunicorn(env, "gthread", tmp / "gunicorn.log") as (base, master):
            meter = CpuMeter(master.pid, [p.pid for p in workers], receiver.proc.pid, database_url)
            use_wrk = shutil.which("wrk") is not None and not args.python_client
            # Warm-up: connections open, code paths hot, workers awake, and the key verified
            # in both API processes (with as many connections as the measurement, so neither
            # process meets the key first — and runs bcrypt — while being measured).
            saturate_python(base, key, 2, args.connections)
            receiver.wait_distinct(1, 30)
            time.sleep(2)
            receiver.reset()
            meter.start()
            profilers = start_profilers(args.profile, master.pid, workers, receiver, args.duration)
            begin = time.time()
            if use_wrk:
                accepted = saturate_wrk(base, key, tmp, args.duration, args.connections)
            else:
                accepted = saturate_python(base, key, args.duration, args.connections)
            published = time.time()
            done = wait_requests(receiver, accepted * WEBHOOKS, timeout=600)
            meter.stop()
            for profiler in profilers:
                profiler.wait(60)
            delivered = receiver.stats()["requests"]
            receiver.reset()
            latencies = latency(base, key, receiver, args.latency_events, args.latency_rate)
        log_text = "".join(p.read_text() for p in tmp.glob("*.log"))
    finally:
        for proc in [*workers, receiver.proc]:  # their groups: RQ's scheduler is a child
            stop_process_group(proc)

    generator = "wrk" if use_wrk else "Python client"
    print(
        f"\npublish: PostgreSQL, gunicorn -w 2 gthread, {args.workers} workers, "
        f"{WEBHOOKS} webhooks per event, {generator} with {args.connections} connections"
    )
    print(
        f"accepted {accepted} events in {published - begin:.1f} s "
        f"({accepted / (published - begin):.0f}/s publish rate)"
    )
    if done is None:
        print(f"only {delivered} of {accepted * WEBHOOKS} deliveries arrived within 600 s")
        events_per_second = 0.0
    else:
        events_per_second = accepted / (done - begin)
        print(f"all {accepted * WEBHOOKS} deliveries in {done - begin:.1f} s")
    p50 = statistics.median(latencies) if latencies else float("inf")
    if len(latencies) > 1:
        p90 = statistics.quantiles(latencies, n=10)[-1]
        print(f"latency at {args.latency_rate:g}/s: p50 {p50:.1f} ms, p90 {p90:.1f} ms")
    verdict = "PASS" if events_per_second >= TARGET_EVENTS_PER_SECOND else "MISS"
    print(
        f"events/s (publish -> every delivery) = {events_per_second:.0f}   "
        f"target >= {TARGET_EVENTS_PER_SECOND}   {verdict}"
    )
    verdict = "PASS" if p50 <= TARGET_P50_MS else "MISS"
    print(f"p50 publish -> receipt = {p50:.1f} ms   target <= {TARGET_P50_MS:g} ms   {verdict}")
    meter.report(accepted, TARGET_EVENTS_PER_SECOND)
    return exit_status(log_text, "tracebacks in the logs")


if __name__ == "__main__":
    raise SystemExit(main())
