"""The live stream under the production layout: idle streams, API latency, SSE delivery latency.

Usage::

    REDIS_URL=redis://127.0.0.1:6379/5 .venv/bin/python bench/stream.py [--streams 500]

What it does, in one run:

1. starts the API (``gunicorn -w 2 -k gthread --threads 4``), the stream service (``gunicorn
   -w 1 -k gevent``, heartbeats every 5 s) and one ``worker.py`` on a throwaway SQLite
   database and the chosen Redis database (flushed first);
2. measures ``GET /api/v1/auth/whoami`` latency and throughput (4 keep-alive connections);
3. opens ``--streams`` idle streams from a separate client process and samples the stream
   worker's resident memory and thread count while they idle (heartbeats flowing);
4. measures the API again with the streams open: the ratio is the streams' cost to the API;
5. publishes events one by one to a local receiver and, for each, takes the time from the
   receiver writing its answer to the ``delivery.attempted`` event reaching an SSE client
   (one clock: everything runs on this machine).

Timings are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from harness import (
    ROOT,
    bench_env,
    flushed_redis,
    free_port,
    gunicorn,
    prepare_database,
    request_loop,
    stop_process_group,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"


def hold_streams(url: str, key: str, count: int) -> None:
    """Child process: open ``count`` streams, print ``ready``, read heartbeats until killed."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    # Idle: nothing these streams ask for happens during the run (no alert rules exist).
    path = "/" + url.split("//")[1].split("/", 1)[1] + "?types=alert.*"
    selector = selectors.DefaultSelector()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    opened = 0
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(request)
        head = sock.recv(4096)
        if not head.startswith(b"HTTP/1.1 200"):
            print("refused:", head[:100], flush=True)
            continue
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        opened += 1
    print(f"ready {opened}", flush=True)
    received = 0
    while True:
        for key_, _ in selector.select(timeout=1):
            data = key_.fileobj.recv(65536)  # type: ignore[union-attr]
            received += len(data)


def rss_and_threads(pid: int) -> tuple[float, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


def children_of(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def api_latency(base: str, key: str, seconds: float) -> tuple[float, float, float]:
    """(req/s, p50 ms, p99 ms) of whoami over 4 keep-alive connections."""
    results: list[tuple[int, int, list[float]]] = []
    deadline = time.perf_counter() + seconds
    url, headers = f"{base}/api/v1/auth/whoami", {"Authorization": f"Bearer {key}"}
    threads = [
        threading.Thread(target=lambda: results.append(request_loop(url, headers, deadline, None)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies = sorted(lat for r in results for lat in r[2])
    ok = sum(r[0] for r in results)
    return (
        ok / seconds,
        latencies[len(latencies) // 2] * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
    )


def start_stream_service(env: dict[str, str], log: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    command = [str(Path(sys.executable).parent / "gunicorn"), "-w", "1", "-k", "gevent"]
    command += ["--worker-connections", "2000", "-b", f"127.0.0.1:{port}", "app:create_app()"]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(base + "/api/v1/health", timeout=1).ok:
                return base, proc
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError("stream service did not start:\n" + log.read_text())


class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answered: dict[str, float] = {}

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()
        Receiver.answered[self.headers["webhook-id"]] = time.time()
        self.wfile.flush()

    def log_message(self, *args: Any) -> None:
        pass


def delivery_latency(api: str, stream: str, key: str, count: int) -> list[float]:
    """Seconds from the receiver's answer to the SSE event, per delivery."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    auth = {"Authorization": f"Bearer {key}"}
    requests.post(
        f"{api}/api/v1/event-types", json={"name": "bench.ping"}, headers=auth, timeout=10
    )
    integration = requests.post(
        f"{api}/api/v1/integrations",
        json={
            "name": "gh",
            "type": "webhook",
            "provider": "github",
            "status": "active",
            "config": {"webhook_secret": "s" * 24},
        },
        headers=auth,
        timeout=10,
    ).json()
    requests.post(
        f"{api}/api/v1/webhooks",
        json={
            "url": f"http://127.0.0.1:{server.server_address[1]}/",
            "events": ["bench.ping"],
            "integration_id": integration["id"],
        },
        headers=auth,
        timeout=10,
    ).raise_for_status()
    seen: dict[str, float] = {}
    response = requests.get(
        f"{stream}/api/v1/stream",
        params={"types": "delivery.attempted"},
        headers=auth,
        stream=True,
        timeout=(5, 60),
    )

    def read() -> None:
        # chunk_size=1: iter_lines would otherwise hold a line until 512 bytes arrived.
        try:
            for line in response.iter_lines(chunk_size=1, decode_unicode=True):
                if line and line.startswith("data: "):
                    data = json.loads(line[6:])
                    seen.setdefault(data["event_id"], time.time())
        except (requests.RequestException, AttributeError, ValueError):
            pass  # closed at the end

    threading.Thread(target=read, daemon=True).start()
    time.sleep(0.5)
    ids = []
    for n in range(count):
        ids.append(
            requests.post(
                f"{api}/api/v1/events",
                json={"type": "bench.ping", "data": {"n": n}},
                headers=auth,
                timeout=10,
            ).json()["id"]
        )
        time.sleep(0.05)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(i in seen for i in ids):
        time.sleep(0.1)
    response.close()
    server.shutdown()
    return [seen[i] - Receiver.answered[i] for i in ids if i in seen and i in Receiver.answered]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds the streams idle")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per API measurement")
    parser.add_argument("--deliveries", type=int, default=100)
    parser.add_argument("--hold", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        hold_streams(args.hold[0], args.hold[1], int(args.hold[2]))
        return 0
    redis_url, _ = flushed_redis(DEFAULT_REDIS_URL)
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    metrics_dir = tmp / "metrics"
    metrics_dir.mkdir()
    env = bench_env(
        tmp,
        redis_url,
        SWITCHBOARD_STREAM_HEARTBEAT="5",
        SWITCHBOARD_ALLOWED_NETWORKS="127.0.0.0/8",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    os.environ.update({k: env[k] for k in ("SWITCHBOARD_INSTANCE_PATH", "SWITCHBOARD_LOG_LEVEL")})
    holder = worker = stream_proc = None
    try:
        from app import create_app

        app = create_app(
            {
                "DATABASE_URL": env["DATABASE_URL"],
                "REDIS_URL": redis_url,
                "SECRET_KEYS": [env["SWITCHBOARD_SECRET_KEYS"]],
            }
        )
        _, key = prepare_database(app)
        stream_base, stream_proc = start_stream_service(env, tmp / "stream.log")
        with gunicorn(env, "gthread", tmp / "api.log") as (api_base, _api):
            worker = subprocess.Popen(
                [sys.executable, "worker.py"], cwd=ROOT, env=env, start_new_session=True
            )
            stream_worker = children_of(stream_proc.pid)[0]
            api_latency(api_base, key, 2)  # warm-up
            before = api_latency(api_base, key, args.duration)
            rss0, threads0 = rss_and_threads(stream_worker)
            holder = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--hold",
                    f"{stream_base}/api/v1/stream",
                    key,
                    str(args.streams),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            assert holder.stdout is not None
            ready = holder.stdout.readline().strip()
            opened = int(ready.split()[1])
            samples = [rss_and_threads(stream_worker)]
            for _ in range(int(args.idle // 5)):
                time.sleep(5)
                samples.append(rss_and_threads(stream_worker))
            during = api_latency(api_base, key, args.duration)
            open_now = requests.get(f"{api_base}/metrics", timeout=10).text
            latencies = delivery_latency(api_base, stream_base, key, args.deliveries)
    finally:
        for proc in (holder, worker, stream_proc):
            if proc is not None:
                stop_process_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)

    opened_total = sum(
        float(line.split()[-1])
        for line in open_now.splitlines()
        if line.startswith('switchboard_stream_connections_total{phase="opened"')
    )
    print(f"\nstreams opened: {opened} of {args.streams} (server counted {opened_total:.0f})")
    print(f"stream worker (gevent, 1 process): before {rss0:.1f} MiB / {threads0} threads")
    for n, (rss, threads) in enumerate(samples):
        print(f"  +{n * 5:>3}s with {opened} idle streams: {rss:.1f} MiB RSS, {threads} threads")
    growth = samples[-1][0] - samples[0][0]
    print(
        f"  memory per stream {((samples[0][0] - rss0) * 1024 / max(opened, 1)):.1f} KiB; "
        f"growth while idle {growth:+.1f} MiB over {args.idle:g}s"
    )
    print("\nAPI GET /auth/whoami (gthread 2x4, 4 keep-alive connections):")
    print(
        f"  without streams: {before[0]:7.0f} req/s  p50 {before[1]:.2f} ms  p99 {before[2]:.2f} ms"
    )
    print(
        f"  with {opened} streams: {during[0]:7.0f} req/s  p50 {during[1]:.2f} ms  "
        f"p99 {during[2]:.2f} ms"
    )
    print(
        f"  ratio with/without: throughput {during[0] / before[0]:.2f}, "
        f"p50 {during[1] / before[1]:.2f}"
    )
    if latencies:
        ms = sorted(x * 1000 for x in latencies)
        print(
            f"\nSSE delivery latency, receiver answer -> delivery.attempted event ({len(ms)} of "
            f"{args.deliveries}): p50 {statistics.median(ms):.1f} ms, "
            f"p95 {ms[int(len(ms) * 0.95) - 1]:.1f} ms, max {ms[-1]:.1f} ms (target <= 100 ms)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
