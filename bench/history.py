"""History lists at scale: ``/logs`` and ``/webhooks/{id}/deliveries`` on empty vs seeded tables.

Usage::

    .venv/bin/python bench/history.py                       # SQLite in a temp dir, 1,000,000 rows
    DATABASE_URL=postgresql://postgres@127.0.0.1/bench_db .venv/bin/python bench/history.py
    .venv/bin/python bench/history.py --rows 200000 --root /path/to/other/checkout

What it does, in one run so the numbers compare like with like:

1. migrates the database (a PostgreSQL ``DATABASE_URL`` must be a throwaway database: its
   ``public`` schema is dropped and recreated) and creates an admin key, an integration and one
   webhook through the app's own API (``app.test_client()``, in process, no HTTP server);
2. seeds one page (50) of integration logs and of deliveries of that webhook, and measures the
   median of ``--repeat`` requests for the first page (``limit=50``) of ``/logs`` and of the
   webhook's deliveries: the "empty table" baseline, a table holding just the page it returns
   (a truly empty list would skip serializing 50 items, which is not what is being compared);
3. seeds ``--rows`` more (older) logs and deliveries (one event per delivery) with one
   ``INSERT … SELECT`` per table in the database itself (``generate_series`` on PostgreSQL,
   a recursive CTE on SQLite), then ``ANALYZE``;
4. measures the first page again (the same 50 rows), and a deep page 90 % of the way down: by
   ``cursor`` (taken from the ``next_cursor`` of one ``offset`` request) when the code pages by
   cursor, else by ``offset`` (``--root`` pointing at a checkout without cursors, such as
   main before cursors, measures "before").

It prints median and best-of-``--repeat`` latencies and the seeded/empty ratios of both; the
verdict (target: within 2x, PASS/MISS) uses the best-of ratios, like ``timeit``: on a shared
machine the median also measures the neighbours, and the two phases cannot be interleaved.
Timings are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--rows", type=int, default=1_000_000, help="logs and deliveries to seed")
parser.add_argument("--repeat", type=int, default=15, help="requests per measurement (median)")
parser.add_argument("--root", type=Path, help="import the app from this checkout instead")
ARGS = parser.parse_args()
sys.path.insert(0, str((ARGS.root or Path(__file__).resolve().parent.parent).resolve()))

import peewee  # noqa: E402

from app import create_app  # noqa: E402
from app.store import migrations  # noqa: E402
from app.store.db import database  # noqa: E402

PAGE = 50


def build_app(tmp: Path) -> Any:
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{tmp / 'history.db'}"
    config = {
        "DATABASE_URL": url,
        "SECRET_KEYS": ["bXlzZWNyZXRrZXlteXNlY3JldGtleW15c2VjcmV0a2U="],
        "ALLOWED_NETWORKS": "127.0.0.0/8",
        "BCRYPT_ROUNDS": 4,
        "RATELIMIT_ENABLED": "false",
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "WARNING",
    }
    app = create_app(config)
    app.instance_path = str(tmp / "instance")
    with app.app_context():
        if url.startswith("postgres"):
            database.execute_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        migrations.upgrade()
    return app


def admin_headers(app: Any) -> dict[str, str]:
    from app.auth.issuing import ensure_admin, new_admin_key

    with app.app_context(), database.connection_context(), database.atomic():
        user, _ = ensure_admin("bench@example.com", None)
        return {"Authorization": f"Bearer {new_admin_key(user, 'bench')}"}


def create_webhook(client: Any, headers: dict[str, str]) -> tuple[str, str]:
    body = {"name": "gh", "type": "webhook", "provider": "github"}
    integration = client.post(
        "/api/v1/integrations",
        json={**body, "config": {"webhook_secret": "s" * 24}},
        headers=headers,
    ).get_json()
    hook = client.post(
        "/api/v1/webhooks",
        json={
            "url": "http://127.0.0.1:9/hook",
            "events": ["*"],
            "integration_id": integration["id"],
        },
        headers=headers,
    ).get_json()
    return integration["id"], hook["id"]


def seed(app: Any, start: int, rows: int, integration_id: str, webhook_id: str) -> float:
    """Insert ``rows`` logs, events and deliveries, numbered (and aged) from ``start`` + 1,
    inside the database; return the seconds taken."""
    started = time.perf_counter()
    with app.app_context(), database.connection_context():
        postgres = isinstance(database.obj, peewee.PostgresqlDatabase)
        if postgres:
            series = f"FROM generate_series({start + 1}, %s) AS s(x)"
            ago = "(now() AT TIME ZONE 'utc') - make_interval(secs => x + 86400)"
            pad = "lpad(x::text, 20, '0')"
            head = ""
        else:
            series = "FROM s"
            ago = "datetime('now', '-' || (x + 86400) || ' seconds')"
            pad = "substr('00000000000000000000' || x, -20, 20)"
            head = (
                f"WITH RECURSIVE s(x) AS (SELECT {start + 1} UNION ALL "
                "SELECT x + 1 FROM s WHERE x < ?) "
            )
        p = "%s" if postgres else "?"
        statements = [
            (
                f"{head}INSERT INTO integration_logs (integration_id, event_type, event_data, "
                f"status, response_time_ms, created_at) SELECT {p}, 'webhook.delivery', '{{}}', "
                f"'success', 12.5, {ago} {series}",
                [integration_id],
            ),
            (
                f"{head}INSERT INTO events (id, type, payload, created_at) "
                f"SELECT 'msg_' || {pad}, 'order.paid', '{{\"n\":1}}', {ago} {series}",
                [],
            ),
            (
                f"{head}INSERT INTO deliveries (id, event_id, webhook_id, status, attempts, "
                f"max_attempts, next_attempt_at, last_status_code, created_at, updated_at) "
                f"SELECT 'dlv_' || {pad}, 'msg_' || {pad}, {p}, 'succeeded', 1, 4, {ago}, 200, "
                f"{ago}, {ago} {series}",
                [webhook_id],
            ),
        ]
        for sql, params in statements:
            with database.atomic():
                end = start + rows
                args = [end, *params] if not postgres else [*params, end]
                database.execute_sql(sql, args)
        database.execute_sql("ANALYZE")
    return time.perf_counter() - started


def timed_ms(client: Any, url: str, headers: dict[str, str], repeat: int) -> tuple[float, float]:
    """(median, best) milliseconds of ``repeat`` requests after one warm-up request."""
    client.get(url, headers=headers)  # warm-up: first-request costs are not the table's
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(url, headers=headers)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.get_json()
    return statistics.median(times), min(times)


def deep_url(client: Any, url: str, headers: dict[str, str], rows: int) -> str:
    """A page 90 % of the way down: by cursor when the list has them, else by offset."""
    offset = rows * 9 // 10
    page = client.get(f"{url}?limit=1&offset={offset}", headers=headers).get_json()
    if "next_cursor" in page:
        return f"{url}?limit={PAGE}&cursor={page['next_cursor']}"
    return f"{url}?limit={PAGE}&offset={offset}"


def checkpoint(app: Any) -> None:
    """SQLite: fold the bulk insert's write-ahead log into the database file, as SQLite's own
    auto-checkpoint does after ordinary, smaller transactions (reads through a WAL of a
    million rows are slower than through the file, and that is the seed, not the list)."""
    with app.app_context(), database.connection_context():
        if not isinstance(database.obj, peewee.PostgresqlDatabase):
            database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = build_app(Path(tmp))
        client = app.test_client()
        headers = admin_headers(app)
        integration_id, webhook_id = create_webhook(client, headers)
        lists = {"/logs": "/api/v1/logs", "deliveries": f"/api/v1/webhooks/{webhook_id}/deliveries"}
        seed(app, 0, PAGE, integration_id, webhook_id)
        empty = {
            name: timed_ms(client, f"{url}?limit={PAGE}", headers, ARGS.repeat)
            for name, url in lists.items()
        }
        took = seed(app, PAGE, ARGS.rows, integration_id, webhook_id)
        checkpoint(app)
        backend = database.obj.__class__.__name__
        print(f"{backend}, {ARGS.rows:,} logs and {ARGS.rows:,} deliveries seeded in {took:.0f} s")
        print("milliseconds, median / best of", ARGS.repeat)
        print(
            f"{'list':<12}{'empty':>13}{'first page':>13}{'deep page':>13}"
            f"{'first/empty':>14}{'deep/empty':>14}"
        )
        verdicts = []
        for name, url in lists.items():
            first = timed_ms(client, f"{url}?limit={PAGE}", headers, ARGS.repeat)
            deep_link = deep_url(client, url, headers, PAGE + ARGS.rows)
            deep = timed_ms(client, deep_link, headers, ARGS.repeat)
            base = empty[name]
            ratios = [(page[0] / base[0], page[1] / base[1]) for page in (first, deep)]
            how = "cursor" if "cursor=" in deep_link else "offset"
            verdicts.append(max(best for _, best in ratios) <= 2)
            cells = "".join(f"{m:>7.1f}/{b:<5.1f}" for m, b in (base, first, deep))
            shown = "".join(f"{m:>8.2f}/{b:<5.2f}" for m, b in ratios)
            print(f"{name:<12}{cells}{shown}  (deep page by {how})")
        print(
            "best-of ratios within 2x of the one-page table:", "PASS" if all(verdicts) else "MISS"
        )


if __name__ == "__main__":
    main()
