"""Publish CPU with 1,000 filtered webhooks on one event type, against none, in one run.

Usage::

    .venv/bin/python bench/filters.py                      # ~30 s
    .venv/bin/python bench/filters.py --webhooks 5000 --publishes 1000
    REDIS_URL=redis://127.0.0.1:6379/9 .venv/bin/python bench/filters.py

Filters are applied at fan-out (``POST /events``), so their cost is paid by every publish.
This measures it in-process, through Flask's test client (no HTTP server, no workers): one
tenant, an admin key the limiter never refuses, a SQLite database in a temporary folder
(``BENCH_DATABASE_URL`` for another) and an embedded Redis (``REDIS_URL`` for another; only
that database is flushed). Four event types:

- ``bench.none``: no webhook subscribes to it — the baseline;
- ``bench.one``: one webhook without a filter: one delivery per publish, which costs a row and
  a dispatcher wake-up whatever decided it;
- ``bench.equal``: ``--webhooks`` webhooks, each with a filter on its own customer
  (``{"data": {"customer": "c17"}}``, and a range on the amount): a publish for one customer
  creates one delivery. Equality terms are indexed by the routes cache, so this should cost
  about what the baseline does (plus that one delivery row);
- ``bench.range``: as many webhooks with range filters only (``{"data.amount": {"$gt": n}}``),
  which cannot be indexed: every filter is evaluated, none passes (no delivery), which shows
  what each evaluated filter costs.

The publishes of the three types are interleaved in rounds and each figure is the best round
(``time.process_time``: this process's CPU, the threads that write the live stream and usage
counters included), so drift on a busy machine hits all three alike. It prints CPU per
publish and the ratio of each type to the baseline. Timings are measurements, never test
assertions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import prepare_database

DEFAULT_PUBLISHES = 300
DEFAULT_ROUNDS = 5


def setup(app: Any, webhooks: int) -> str:
    """Migrate, create the admin key, the event types and the filtered webhooks (inserted in
    bulk: the API's per-webhook checks are not what is measured); return the key."""
    from app.store.db import database
    from app.store.models import DEFAULT_TENANT_ID, Integration, Webhook
    from app.store.secretbox import encrypt
    from app.webhooks.signing import generate_secret

    _, key = prepare_database(app)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    for name in ("bench.none", "bench.one", "bench.equal", "bench.range"):
        res = client.post("/api/v1/event-types", json={"name": name}, headers=headers)
        assert res.status_code == 201, res.get_json()
    with app.app_context(), database.connection_context(), database.atomic():
        integration = Integration.create(
            tenant_id=DEFAULT_TENANT_ID, name="bench", type="webhook", provider="github"
        )
        secret = encrypt(generate_secret())
        rows = []
        for n in range(webhooks):
            base = {
                "tenant_id": DEFAULT_TENANT_ID,
                "url": f"http://127.0.0.1:9/hook{n}",
                "integration": integration.id,
                "secret": secret,
            }
            rows.append(
                {
                    **base,
                    "events": ["bench.equal"],
                    "payload_filter": {"data": {"customer": f"c{n}", "amount": {"$gte": 0}}},
                }
            )
            rows.append(
                {**base, "events": ["bench.range"], "payload_filter": {"data.amount": {"$gt": n}}}
            )
        rows.append({**base, "events": ["bench.one"], "payload_filter": None})
        for start in range(0, len(rows), 500):
            Webhook.insert_many(rows[start : start + 500]).execute()
    return key


def publish_cpu(client: Any, key: str, event_type: str, publishes: int, round_no: int) -> float:
    """CPU milliseconds per publish of ``publishes`` events of ``event_type``."""
    headers = {"Authorization": f"Bearer {key}"}
    started = time.process_time()
    for n in range(publishes):
        data = {"customer": f"c{(round_no * publishes + n) % 1000}", "amount": -1, "n": n}
        if event_type in ("bench.equal", "bench.one"):
            data["amount"] = 5
        res = client.post(
            "/api/v1/events", json={"type": event_type, "data": data}, headers=headers
        )
        if res.status_code != 202:
            raise RuntimeError(f"publish -> {res.status_code}: {res.get_data(as_text=True)}")
        expected = 1 if event_type in ("bench.equal", "bench.one") else 0
        if res.get_json()["deliveries"] != expected:
            raise RuntimeError(f"{event_type}: {res.get_json()} (expected {expected} deliveries)")
    return (time.process_time() - started) * 1000 / publishes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webhooks", type=int, default=1000, help="filtered webhooks per type")
    parser.add_argument("--publishes", type=int, default=DEFAULT_PUBLISHES, help="per round")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-bench-filters-"))
    os.environ.update(
        DATABASE_URL=os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{tmp / 'bench.db'}",
        SWITCHBOARD_INSTANCE_PATH=str(tmp / "instance"),
        SWITCHBOARD_LOG_LEVEL="WARNING",
        SWITCHBOARD_ACCESS_LOG="false",
    )
    from cryptography.fernet import Fernet

    os.environ["SWITCHBOARD_SECRET_KEYS"] = Fernet.generate_key().decode()
    from app import create_app
    from app.factory import release_app

    app = create_app()
    if app.config["REDIS_URL"]:
        with app.app_context():
            from app.store.redis import get_redis

            get_redis().flushdb()
    try:
        key = setup(app, args.webhooks)
        client = app.test_client()
        types = ("bench.none", "bench.one", "bench.equal", "bench.range")
        for event_type in types:  # load and compile the routes once, outside the figures
            publish_cpu(client, key, event_type, 5, 0)
        best = dict.fromkeys(types, float("inf"))
        for round_no in range(args.rounds):
            for event_type in types:
                cpu = publish_cpu(client, key, event_type, args.publishes, round_no)
                best[event_type] = min(best[event_type], cpu)
        database = app.config["DATABASE_URL"].split(":", 1)[0]
        print(
            f"publish CPU per event ({database}, best of {args.rounds} rounds of "
            f"{args.publishes} publishes, interleaved):"
        )
        baseline = best["bench.none"]
        labels = {
            "bench.none": "no webhook on the type (baseline)",
            "bench.one": "1 webhook, no filter, 1 delivery",
            "bench.equal": f"{args.webhooks:,} webhooks, indexed equality filters, 1 matches",
            "bench.range": f"{args.webhooks:,} webhooks, range filters only, none matches",
        }
        for event_type in types:
            ratio = best[event_type] / baseline
            print(f"  {labels[event_type]:<66} {best[event_type]:7.3f} ms   ratio {ratio:5.2f}")
        print(
            f"ratio (filtered / none): {best['bench.equal'] / baseline:.2f}"
            f"; against one unfiltered webhook (the same one delivery): "
            f"{best['bench.equal'] / best['bench.one']:.2f}"
        )
    finally:
        release_app(app)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
