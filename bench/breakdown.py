"""Where a hot request's time goes: CPU per request in-process, and the stages of the two misses.

Usage::

    .venv/bin/python bench/breakdown.py              # ~40 s
    REDIS_URL=redis://127.0.0.1:6379/9 .venv/bin/python bench/breakdown.py

``bench/auth.py`` and ``bench/gateway.py`` say *whether* the list and gateway targets are met
under gunicorn; this script says *why not*, without a profiler's distortion:

1. the same fixtures as those two (a SQLite database with 200 integrations, an admin key with a
   limit the limiter never reaches, a ``rest`` integration in front of the fast local upstream
   of ``bench/gateway.py``), rate limiting on;
2. CPU time per request (``time.thread_time``, best of ``--rounds`` runs of ``--requests``
   requests, through Flask's test client, so no HTTP server is involved) of ``/health``,
   ``/auth/whoami``, ``/integrations?limit=20`` and a proxied ``GET``;
3. each stage of a list page and of a proxied request timed on its own (best of 5 ``timeit``
   runs): building the SQL (the page and its ``COUNT`` subquery), running it and converting
   the rows, hydrating models, dumping, JSON; the integration lookup, the balancer's script
   and the upstream exchange itself; and the rate-limit script every authenticated request
   runs.

``thread_time`` counts the requesting thread only: work handed to background threads (the
gateway's batched log writer, the usage flusher) is not in these figures.
In-process figures carry no HTTP parsing, so their ratios are lower than gunicorn's (which adds
the same fixed cost to every request): compare stages with each other, not with bench/auth.py.
Timings are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import auth as auth_bench
import gateway as gateway_bench
from harness import bench_env, flushed_redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"


def cpu_ms_per_request(call: Callable[[], Any], requests: int, rounds: int) -> float:
    """Best-of-``rounds`` CPU milliseconds of this thread per ``call``."""
    best = float("inf")
    for _ in range(rounds):
        started = time.thread_time()
        for _ in range(requests):
            call()
        best = min(best, (time.thread_time() - started) * 1000 / requests)
    return best


def stage_ms(call: Callable[[], Any], number: int = 300) -> float:
    """Best-of-5 wall milliseconds per ``call`` (each stage runs alone, on an idle loop)."""
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per round")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    redis_url, _ = flushed_redis(DEFAULT_REDIS_URL)
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-bench-breakdown-"))
    env = bench_env(tmp, redis_url, SWITCHBOARD_ALLOWED_NETWORKS="127.0.0.0/8")
    os.environ.update(env)
    upstream, upstream_url = gateway_bench.start_upstream(tmp)
    try:
        key = auth_bench.prepare(
            env["DATABASE_URL"], redis_url, env["SWITCHBOARD_SECRET_KEYS"].split(",")[0]
        )
        figures, stages = measure(key, upstream_url, args.requests, args.rounds)
    finally:
        upstream.kill()
        upstream.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    report(figures, stages, args)
    return 0


def measure(
    key: str, upstream_url: str, requests: int, rounds: int
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    from peewee import SQL, fn

    from app import create_app
    from app.gateway import resources as gateway
    from app.gateway.balancer import Upstream, UpstreamBalancer
    from app.integrations.schemas import IntegrationPageSchema, IntegrationQueryArgsSchema
    from app.limits.enforce import get_limiter
    from app.outbound.session import outbound_session
    from app.store.db import database
    from app.store.models import Integration
    from app.store.redis import get_redis
    from app.web.api import paginate
    from app.web.dumping import accelerate

    app = create_app()
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    integration_id = gateway_bench.create_rest_integration(client, key, upstream_url)
    paths = {
        "health": ("/api/v1/health", {}),
        "whoami": ("/api/v1/auth/whoami", headers),
        "list": ("/api/v1/integrations?limit=20", headers),
        "gateway": (f"/api/v1/gateway/{integration_id}/ping", headers),
    }
    figures: dict[str, float] = {}
    for name, (path, sent) in paths.items():
        for _ in range(100):  # warm caches, connections and the key snapshot
            if client.get(path, headers=sent).status_code != 200:
                raise RuntimeError(f"GET {path} failed")
        figures[name] = cpu_ms_per_request(
            lambda path=path, sent=sent: client.get(path, headers=sent), requests, rounds
        )

    with app.test_request_context("/api/v1/gateway/x/ping"):
        database.connect(reuse_if_open=True)
        ordered = Integration.select().order_by(Integration.created_at.desc(), Integration.id)
        total = ordered.order_by().select(fn.COUNT(SQL("*"))).alias("_page_total")
        query = ordered.select_extend(total).limit(20).offset(0)  # what paginate() runs
        page = paginate(ordered, {"limit": 20, "offset": 0})
        schema = accelerate(IntegrationPageSchema())
        dumped = schema.dump(page)
        build = stage_ms(lambda: query.sql())
        tuples = stage_ms(lambda: list(query.clone().tuples()))
        models = stage_ms(lambda: list(query.clone()))
        arguments = IntegrationQueryArgsSchema()
        list_stages = {
            "parse the query arguments (webargs schema)": stage_ms(
                lambda: arguments.load({"limit": "20"})
            ),
            "build the SQL: page + COUNT subquery (peewee)": build,
            "run it, fetch 20 rows, convert JSON and dates": tuples - build,
            "hydrate 20 models": models - tuples,
            "dump the page (accelerated schema)": stage_ms(lambda: schema.dump(page)),
            "encode JSON": stage_ms(lambda: app.json.dumps(dumped)),
        }
        balancer = UpstreamBalancer(get_redis())
        pool = [Upstream(upstream_url)]
        session = outbound_session()

        def exchange() -> None:
            response = session.urlopen("GET", upstream_url + "/ping", preload_content=False)
            response.read()
            response.release_conn()

        limiter_ms = stage_ms(lambda: get_limiter(app).hit("bench-breakdown", 10**9))
        gateway_stages = {
            "integration lookup + config": stage_ms(
                lambda: gateway._rest_integration(integration_id)
            ),
            "balancer pick (Redis round trip; skipped when cached)": stage_ms(
                lambda: balancer.pick(integration_id, pool)
            ),
            "upstream exchange (urllib3, keep-alive)": stage_ms(exchange),
        }
    figures["limiter"] = limiter_ms
    return figures, {"list": list_stages, "gateway": gateway_stages}


def report(figures: dict[str, float], stages: dict[str, dict[str, float]], args: Any) -> None:
    health = figures["health"]
    print(
        f"\nin-process CPU per request (Flask test client, best of {args.rounds} x "
        f"{args.requests}; SQLite, rate limiting on)\n"
    )
    print(f"{'endpoint':<10} {'ms/req':>7} {'x health':>9}")
    for name, value in figures.items():
        if name == "limiter":
            continue
        print(f"{name:<10} {value:7.3f} {value / health:9.2f}")
    auth_cost = figures["whoami"] - health
    print(
        f"\nauthentication + rate limit (whoami - health): {auth_cost:.3f} ms, of which the "
        f"rate-limit script's Redis round trip {figures['limiter']:.3f} ms"
    )
    for name in ("list", "gateway"):
        own = figures[name] - figures["whoami"]
        print(f"\n{name}: {own:.3f} ms beyond an authenticated request; its stages, timed alone:")
        total = sum(stages[name].values())
        for stage, value in stages[name].items():
            print(f"  {value:7.3f} ms  {value / total * 100:4.0f} %  {stage}")
        print(f"  {total:7.3f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
