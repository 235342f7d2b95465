"""Switchboard worker: an RQ worker on ``webhooks``, ``connectors`` and ``default``.

Runs jobs in-process (no fork per job: deliveries are short I/O-bound jobs that open their own
database connections), with RQ's scheduler for retries, plus the outbox reconciler and the
OAuth token refresher threads. RQ's own lines (job started, job OK, scheduler) follow
``SWITCHBOARD_LOG_LEVEL``.

    python worker.py [--burst]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rq import SimpleWorker

from app import create_app
from app.alerts.evaluate import start_alert_evaluator
from app.events.reconciler import start_reconciler
from app.logs.structured import request_id_bound
from app.oauth.refresher import start_token_refresher
from app.store.queues import QUEUE_NAMES, get_queue
from app.store.redis import RedisUnreachable, require_redis
from app.store.retention import start_retention


class Worker(SimpleWorker):
    """RQ's in-process worker; a job's log lines carry the request id that queued it."""

    def perform_job(self, job: Any, *args: Any, **kwargs: Any) -> bool:
        with request_id_bound(job.meta.get("request_id")):
            return bool(super().perform_job(job, *args, **kwargs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--name", help="worker name (default: RQ's)")
    args = parser.parse_args()
    app = create_app()
    with app.app_context():
        try:
            connection = require_redis(app)
        except RedisUnreachable as exc:
            sys.exit(f"switchboard worker: {exc}")
        start_reconciler(app)
        start_retention(app)
        start_token_refresher(app)
        start_alert_evaluator(app)
        worker = Worker(
            [get_queue(name) for name in QUEUE_NAMES], connection=connection, name=args.name
        )
        worker.work(burst=args.burst, with_scheduler=True, logging_level=app.config["LOG_LEVEL"])


if __name__ == "__main__":
    main()
