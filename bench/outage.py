"""A receiver outage longer than the retry budget: how many events reach it in the end?

Usage::

    .venv/bin/python bench/outage.py                 # the issue's case: 60 s, ~2.5 min
    .venv/bin/python bench/outage.py --events 300 --outage 15

Reproduces the reported incident: two webhooks (``retry_count`` 3, retry schedule ``1,2,5,10``)
to one local receiver that answers 503 for ``--outage`` seconds while ``--events`` events are
published evenly over that time (one ``POST /api/v1/events`` each), then answers 200. It waits
until no delivery is pending and prints, per webhook, its status and the distinct events the
receiver accepted ("after the outage"). Then it repairs the way an operator would: re-enable
each disabled webhook (``POST /webhooks/{id}/enable``, or ``PATCH {"status": "active"}`` where
that endpoint does not exist) and ``POST /webhooks/{id}/recover`` from the start of the run
(where it exists), waits again and prints the counts "after repair". A private redis-server,
a SQLite database in a temp dir and one ``worker.py``; every child process is stopped on exit.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from harness import ROOT, bench_env, exit_status, prepare_database, stop_process_group

sys.path.insert(0, str(ROOT / "tests"))
from redis_server import RedisServer  # noqa: E402 - tests/ holds the private server helper
from webhooks import start_workers  # noqa: E402

EVENT_TYPE = "bench.outage"


class Receiver:
    """Answers 503 while ``down`` is set, else 200; the webhook-ids it accepted, per path."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.accepted: dict[str, set[str]] = {}
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = 503 if receiver.down.is_set() else 200
                if status == 200:
                    with lock:
                        receiver.accepted.setdefault(self.path, set()).add(
                            self.headers["webhook-id"]
                        )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def main() -> int:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1200, help="events published in total")
    parser.add_argument("--outage", type=float, default=60, help="seconds the receiver is down")
    parser.add_argument("--timeout", type=float, default=120, help="max seconds to settle")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="switchboard-bench-outage-"))
    redis_server = RedisServer(tmp / "redis")
    redis_server.start()
    env = bench_env(
        tmp,
        redis_server.url(),
        SWITCHBOARD_ALLOWED_NETWORKS="127.0.0.0/8",
        SWITCHBOARD_WEBHOOK_RETRY_SCHEDULE="1,2,5,10",
    )
    os.environ.clear()
    os.environ.update(env)
    receiver = Receiver()
    workers = []
    try:
        from app import create_app

        app = create_app()
        _, key = prepare_database(app)
        client = app.test_client()
        auth = {"Authorization": f"Bearer {key}"}

        def call(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
            return client.open(url, method=method, json=body, headers=auth)

        integration = call(
            "POST",
            "/api/v1/integrations",
            {"name": "outage", "type": "webhook", "provider": "github",
             "config": {"webhook_secret": "x" * 24}},
        ).get_json()  # fmt: skip
        call("POST", "/api/v1/event-types", {"name": EVENT_TYPE, "description": "outage"})
        hooks = {
            path: call(
                "POST",
                "/api/v1/webhooks",
                {
                    "url": receiver.url + path,
                    "events": [EVENT_TYPE],
                    "retry_count": 3,
                    "integration_id": integration["id"],
                },
            ).get_json()["id"]  # fmt: skip
            for path in ("/a", "/b")
        }
        workers = start_workers(1, env, tmp)
        started = datetime.now(UTC)
        receiver.down.set()
        published = []
        t0 = time.monotonic()
        for i in range(args.events):
            time.sleep(max(0.0, t0 + i * args.outage / args.events - time.monotonic()))
            res = call("POST", "/api/v1/events", {"type": EVENT_TYPE, "data": {"i": i}})
            published.append(res.get_json()["id"])
        time.sleep(max(0.0, t0 + args.outage - time.monotonic()))
        receiver.down.clear()
        print(f"{args.events} events published during a {args.outage:g} s outage")

        def settle() -> None:
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                pending = sum(
                    call(
                        "GET", f"/api/v1/webhooks/{h}/deliveries?status=pending&limit=1&count=true"
                    ).get_json()["total"]
                    for h in hooks.values()
                )
                if not pending:
                    return
                time.sleep(0.5)

        def report(stage: str) -> None:
            for path, hook_id in hooks.items():
                state = call("GET", f"/api/v1/webhooks/{hook_id}").get_json()
                got = len(receiver.accepted.get(path, set()) & set(published))
                print(
                    f"{stage:>14} webhook {path}: {state['status']:>8}, "
                    f"{got}/{len(published)} events received, {len(published) - got} missing"
                )

        settle()
        report("after outage")
        since = started.isoformat().replace("+00:00", "Z")
        for hook_id in hooks.values():
            enabled = call("POST", f"/api/v1/webhooks/{hook_id}/enable", {})
            if enabled.status_code == 404 or enabled.status_code == 405:
                call("PATCH", f"/api/v1/webhooks/{hook_id}", {"status": "active"})
            recovered = call("POST", f"/api/v1/webhooks/{hook_id}/recover", {"since": since})
            if recovered.status_code == 202:
                print(f"recover {hook_id}: {recovered.get_json()['requeued']} re-queued")
            else:
                print(f"recover {hook_id}: HTTP {recovered.status_code} (not available)")
        time.sleep(1)
        settle()
        report("after repair")
        return exit_status((tmp / "worker0.log").read_text(), "worker log")
    finally:
        for proc in workers:
            stop_process_group(proc)
        receiver.server.shutdown()
        redis_server.close()


if __name__ == "__main__":
    raise SystemExit(main())
