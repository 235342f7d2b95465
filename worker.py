"""Switchboard worker: an RQ worker on ``webhooks``, ``connectors`` and ``default``.

Runs jobs in-process (no fork per job: deliveries are short I/O-bound jobs that open their own
database connections), with RQ's scheduler for retries, plus the background threads below.
Redis or database outages are ridden out (one log line, backoff, reconnect: see
``app/workers/runner.py``); only an unreachable Redis at start-up ends it. RQ's own lines (job
started, job OK, scheduler) follow ``SWITCHBOARD_LOG_LEVEL``.

    python worker.py [--burst] [--name NAME]
"""

from __future__ import annotations

import argparse
import sys

from app import create_app
from app.alerts.evaluate import start_alert_evaluator
from app.events.reconciler import start_reconciler
from app.oauth.refresher import start_token_refresher
from app.store.redis import RedisUnreachable, require_redis
from app.store.retention import start_retention
from app.tenants.erasure import start_erasure_finisher
from app.workers.runner import run_worker

#: Threads every worker runs beside RQ's loop (started again if one ever ends).
BACKGROUND = (
    start_reconciler,
    start_retention,
    start_token_refresher,
    start_alert_evaluator,
    start_erasure_finisher,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument(
        "--name", help="worker name (default: host.pid.random); replaces a dead holder of it"
    )
    args = parser.parse_args()
    app = create_app()
    with app.app_context():
        try:
            require_redis(app)
        except RedisUnreachable as exc:
            sys.exit(f"switchboard worker: {exc}")
    run_worker(app, name=args.name, burst=args.burst, background=BACKGROUND)


if __name__ == "__main__":
    main()
