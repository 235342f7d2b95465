"""The stream process's memory with clients that read nothing while large events flow.

Usage::

    REDIS_URL=redis://127.0.0.1:6379/5 .venv/bin/python bench/stream_memory.py \
        [--clients 10] [--events 150] [--kb 200]

What it does, in one run: starts the stream service (``gunicorn -w 1 -k gevent``) on a throwaway
SQLite database and the chosen Redis database (flushed first); samples the stream worker's
resident memory (the baseline); opens ``--clients`` streams from a process that never reads
them (a 4 KiB receive buffer); publishes ``--events`` events of ``--kb`` KiB each; samples the
memory at its peak while they are held, then after the clients disconnect. Each client's buffer
is bounded (``SWITCHBOARD_STREAM_CLIENT_BUFFER_BYTES``, default 1 MiB): a client that falls
further behind is dropped with a ``stream.gap`` notice, so the peak stays near the baseline plus
what the kernel and the bounded buffers hold, and memory returns to the baseline afterwards.

Measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, bench_env, flushed_redis, prepare_database, stop_process_group
from stream import children_of, rss_and_threads, start_stream_service

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"


def hold_unread(url: str, key: str, count: int) -> None:
    """Child process: open ``count`` streams, print ``ready``, never read; exit on stdin EOF."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    request = (
        f"GET /api/v1/stream?types=event.published HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {key}\r\n\r\n"
    ).encode()
    held = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(request)
        held.append(sock)
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    for sock in held:
        sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--events", type=int, default=150)
    parser.add_argument("--kb", type=int, default=200)
    parser.add_argument("--hold", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        hold_unread(args.hold[0], args.hold[1], int(args.hold[2]))
        return 0
    redis_url, _ = flushed_redis(DEFAULT_REDIS_URL)
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    env = bench_env(
        tmp,
        redis_url,
        SWITCHBOARD_STREAM_HEARTBEAT="2",
        SWITCHBOARD_STREAM_MAX_PER_KEY=str(args.clients + 1),
    )
    os.environ.update({k: env[k] for k in ("SWITCHBOARD_INSTANCE_PATH", "SWITCHBOARD_LOG_LEVEL")})
    stream_proc = holder = None
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
        stream_worker = children_of(stream_proc.pid)[0]
        time.sleep(2)  # settle after start-up
        baseline = rss_and_threads(stream_worker)[0]
        holder = subprocess.Popen(
            [sys.executable, __file__, "--hold", stream_base, key, str(args.clients)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert holder.stdout is not None and holder.stdin is not None
        holder.stdout.readline()
        api = app.test_client()
        auth = {"Authorization": f"Bearer {key}"}
        api.post("/api/v1/event-types", json={"name": "bench.big"}, headers=auth)
        peak = baseline
        body = {"type": "bench.big", "data": {"x": "y" * (args.kb * 1024)}}
        for _ in range(args.events):
            assert api.post("/api/v1/events", json=body, headers=auth).status_code == 202
            peak = max(peak, rss_and_threads(stream_worker)[0])
        for _ in range(20):  # the hub catches up; the dropped clients' grace runs out
            time.sleep(0.5)
            peak = max(peak, rss_and_threads(stream_worker)[0])
        holder.stdin.close()
        holder.wait(10)
        time.sleep(12)  # heartbeats (every 2 s) find the closed sockets
        after = rss_and_threads(stream_worker)[0]
    finally:
        for proc in (holder, stream_proc):
            if proc is not None:
                stop_process_group(proc)  # type: ignore[arg-type]
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\n{args.clients} clients reading nothing, {args.events} events of {args.kb} KiB "
        f"({args.events * args.kb / 1024:.0f} MiB in all) on one gevent stream process:"
    )
    print(f"  baseline {baseline:.1f} MiB, peak {peak:.1f} MiB, after they closed {after:.1f} MiB")
    print(
        f"  peak/baseline {peak / baseline:.2f}, after/baseline {after / baseline:.2f} "
        "(target: after/baseline ~ 1.0)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
