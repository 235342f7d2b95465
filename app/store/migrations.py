"""Schema migrations: an ordered list, applied once each and recorded in ``schema_migrations``.

Add a new function at the end of ``MIGRATIONS``, named by what it does; never edit one that
has shipped. ``flask --app app db upgrade`` (and the run command) applies the pending ones.
"""

from __future__ import annotations

from collections.abc import Callable

import peewee
from playhouse.migrate import SchemaMigrator, migrate

from app.store import models
from app.store.db import database


class SchemaMigration(models.BaseModel):
    version = peewee.CharField(primary_key=True, max_length=100)
    applied_at = peewee.DateTimeField(default=models.utcnow)

    class Meta:
        table_name = "schema_migrations"


def _0001_foundation() -> None:
    database.create_tables(models.FOUNDATION_MODELS)


def _0002_events_and_webhooks() -> None:
    database.create_tables(models.EVENT_MODELS)


def _0003_oauth_tokens_and_sso_identities() -> None:
    database.create_tables(models.OAUTH_MODELS, safe=True)


def _0004_event_request_ids() -> None:
    """events.request_id: the API request that published an event (a fresh database has it)."""
    if "request_id" not in {column.name for column in database.get_columns("events")}:
        migrator = SchemaMigrator.from_database(database.obj)
        migrate(migrator.add_column("events", "request_id", models.Event.request_id))


def _0005_alerts() -> None:
    database.create_tables(models.ALERT_MODELS, safe=True)


def _0006_webhook_failing_since() -> None:
    """webhooks.failing_since: auto-disable measures failing time (a fresh database has it)."""
    if "failing_since" not in {column.name for column in database.get_columns("webhooks")}:
        migrator = SchemaMigrator.from_database(database.obj)
        migrate(migrator.add_column("webhooks", "failing_since", models.Webhook.failing_since))


HISTORY_INDEXES = {
    "integration_logs_integration_id_id": ("integration_logs", "integration_id, id"),
    "events_created_at_id": ("events", "created_at, id"),
    "deliveries_webhook_id_created_at_id": ("deliveries", "webhook_id, created_at, id"),
    "deliveries_created_at": ("deliveries", "created_at"),
}


def _0007_history_indexes() -> None:
    """Indexes for keyset pages of logs, events and deliveries, and for retention.

    Named as peewee names the models' indexes, so a database created after this (whose tables
    already have them) skips them.
    """
    for name, (table, columns) in HISTORY_INDEXES.items():
        database.execute_sql(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({columns})")


# What decides which targets an event goes to: a change to any of it bumps the routes version
# (in the changing transaction), so a process's cached copy of the routes is checked with one
# single-row read per publish (app/events/routes.py). Triggers, not application code, so that
# every writer (API, workers, a shell, a cascade) is covered. {table: watched columns}.
ROUTE_COLUMNS = {
    "webhooks": ("events", "status", "retry_count"),
    "integrations": ("status", "subscriptions"),
}


def _0008_event_routes_version() -> None:
    """event_routes_version: one row whose value changes with every change to the routing of
    events (webhooks' patterns and status, integrations' subscriptions and status)."""
    database.execute_sql(
        "CREATE TABLE IF NOT EXISTS event_routes_version"
        " (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)"
    )
    database.execute_sql(
        "INSERT INTO event_routes_version (id, version) SELECT 1, 1"
        " WHERE NOT EXISTS (SELECT 1 FROM event_routes_version)"
    )
    # A new value, never the old one plus one: a process may cache routes it read inside a
    # transaction that changed them and then rolled back; the next committed change must not
    # reuse the version that cache carries. (A sequence ignores rollbacks; SQLite's random() is
    # 64 bits.)
    postgres = isinstance(database.obj, peewee.PostgresqlDatabase)
    if postgres:
        bump = "UPDATE event_routes_version SET version = nextval('event_routes_version_seq')"
        database.execute_sql("CREATE SEQUENCE IF NOT EXISTS event_routes_version_seq START 2")
        database.execute_sql(
            "CREATE OR REPLACE FUNCTION bump_event_routes_version() RETURNS trigger"
            f" LANGUAGE plpgsql AS $$ BEGIN {bump}; RETURN NULL; END $$"
        )
    for table, columns in ROUTE_COLUMNS.items():
        _route_triggers(table, columns)


def _route_triggers(table: str, columns: tuple[str, ...]) -> None:
    """(Re)create the triggers that bump ``event_routes_version`` when a row of ``table`` is
    inserted or deleted, or one of ``columns`` changes (the bump itself: migration 0008)."""
    postgres = isinstance(database.obj, peewee.PostgresqlDatabase)
    changed = " OR ".join(
        f"OLD.{c} IS DISTINCT FROM NEW.{c}" if postgres else f"OLD.{c} IS NOT NEW.{c}"
        for c in columns
    )
    triggers = {
        f"{table}_routes_insert": ("AFTER INSERT", ""),
        f"{table}_routes_delete": ("AFTER DELETE", ""),
        f"{table}_routes_update": (f"AFTER UPDATE OF {', '.join(columns)}", f"WHEN ({changed})"),
    }
    if postgres:  # TRUNCATE fires no row trigger
        triggers[f"{table}_routes_truncate"] = ("AFTER TRUNCATE", "")
    bump = "UPDATE event_routes_version SET version = random()"  # SQLite's: see migration 0008
    for name, (timing, when) in triggers.items():
        if postgres:
            level = "STATEMENT" if "TRUNCATE" in timing else "ROW"
            database.execute_sql(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            database.execute_sql(
                f"CREATE TRIGGER {name} {timing} ON {table} FOR EACH {level} {when}"
                " EXECUTE FUNCTION bump_event_routes_version()"
            )
        else:
            database.execute_sql(f"DROP TRIGGER IF EXISTS {name}")
            database.execute_sql(
                f"CREATE TRIGGER {name} {timing} ON {table} FOR EACH ROW {when} BEGIN {bump}; END"
            )


def _columns(table: str) -> set[str]:
    return {column.name for column in database.get_columns(table)}


def _0009_tenants() -> None:
    """Tenants: every row existing so far moves into the ``default`` tenant.

    - ``tenants``, ``memberships`` and ``sso_domains`` are created, and the default tenant;
    - every tenant-owned table gets ``tenant_id NOT NULL``, set to the default tenant. (SQLite
      cannot add a NOT NULL column without a default, so there the column keeps one; the model
      never lets a write rely on it. PostgreSQL drops it.) Its indexes are created;
    - ``users.role`` becomes a membership in the default tenant, and admins become platform
      admins (operators), whose admin keys become platform keys: the admin key a script holds
      keeps working everywhere, and now also manages tenants;
    - custom event type names and ``Idempotency-Key``s become unique per tenant, and so does
      an SSO identity (issuer, subject); the domains of existing SSO integrations are claimed
      by the default tenant.
    A database created after this has the new shape already; each step checks first.
    """
    postgres = isinstance(database.obj, peewee.PostgresqlDatabase)
    database.create_tables(models.TENANT_MODELS, safe=True)
    default = models.DEFAULT_TENANT_ID
    models.Tenant.insert(
        id=default, name="default", external_id="default"
    ).on_conflict_ignore().execute()
    existing = set(database.get_tables())
    for model in models.TENANT_OWNED:
        table = model._meta.table_name
        if table not in existing:  # a table later migrations create, with its tenant_id
            continue
        if "tenant_id" not in _columns(table):
            database.execute_sql(
                f"ALTER TABLE {table} ADD COLUMN tenant_id VARCHAR(40) NOT NULL DEFAULT '{default}'"
            )
            if postgres:
                database.execute_sql(f"ALTER TABLE {table} ALTER COLUMN tenant_id DROP DEFAULT")
    if "platform" not in _columns("api_keys"):
        database.execute_sql(
            "ALTER TABLE api_keys ADD COLUMN platform BOOLEAN NOT NULL DEFAULT FALSE"
        )
    if "platform_admin" not in _columns("users"):
        database.execute_sql(
            "ALTER TABLE users ADD COLUMN platform_admin BOOLEAN NOT NULL DEFAULT FALSE"
        )
    if "role" in _columns("users"):
        rows = database.execute_sql("SELECT id, role FROM users").fetchall()
        for user_id, role in rows:
            models.Membership.insert(
                id=models.new_id("mem"), user=user_id, tenant_id=default, role=role
            ).on_conflict_ignore().execute()
        admins = [user_id for user_id, role in rows if role == "admin"]
        if admins:
            models.User.update(platform_admin=True).where(models.User.id.in_(admins)).execute()
            keys = models.ApiKey.of(default).where(models.ApiKey.created_by.in_(admins))
            platform = [row.id for row in keys if "admin" in (row.permissions or ())]
            if platform:
                models.ApiKey.update_of(default, platform=True).where(
                    models.ApiKey.id.in_(platform)
                ).execute()
        database.execute_sql("ALTER TABLE users DROP COLUMN role")
    if "id" not in _columns("event_types"):
        _rebuild_event_types()
    database.execute_sql("DROP INDEX IF EXISTS events_idempotency_key")
    database.execute_sql("DROP INDEX IF EXISTS sso_identities_issuer_subject")
    tables: list[type[peewee.Model]] = [*models.TENANT_OWNED, *models.TENANT_MODELS]
    for table_model in (t for t in tables if t._meta.table_name in existing):
        for index in table_model._meta.fields_to_index():
            database.execute_sql(*_index_sql(table_model, index))
    _claim_existing_sso_domains(default)


def _index_sql(model: type[peewee.Model], index: peewee.ModelIndex) -> tuple[str, list[object]]:
    """``CREATE [UNIQUE] INDEX IF NOT EXISTS``, named as peewee names the model's index."""
    context = database.get_sql_context()
    return context.sql(index.safe(True)).query()


def _rebuild_event_types() -> None:
    """Event types had their name as primary key: give them an id and a per-tenant name."""
    rows = database.execute_sql(
        "SELECT name, description, created_at, tenant_id FROM event_types"
    ).fetchall()
    database.execute_sql("DROP TABLE event_types")
    database.create_tables([models.EventType])
    for name, description, created_at, tenant_id in rows:
        models.EventType.create(
            name=name, description=description, created_at=created_at, tenant_id=tenant_id
        )


def _claim_existing_sso_domains(tenant_id: str) -> None:
    for integration in models.Integration.of(tenant_id).where(
        models.Integration.provider == "oidc"
    ):
        for domain in integration.config.get("allowed_domains") or ():
            models.SsoDomain.insert(
                domain=str(domain).lower(), tenant_id=tenant_id, integration=integration.id
            ).on_conflict_ignore().execute()


def _add_columns(table: str, columns: dict[str, str]) -> None:
    """``ALTER TABLE … ADD COLUMN`` each of ``columns`` (name → SQL type and default) that
    ``table`` lacks (a database created after the migration has them already)."""
    present = _columns(table)
    for name, definition in columns.items():
        if name not in present:
            database.execute_sql(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")


def _0010_event_type_schemas() -> None:
    """event_types.payload_schema and examples: typed events. A schema change reaches every
    process's routes cache (where validators are kept) through ``event_routes_version``."""
    _add_columns("event_types", {"payload_schema": "TEXT", "examples": "TEXT"})
    _route_triggers("event_types", ("payload_schema",))


#: Deliveries of fifo webhooks: one queue per (webhook, ordering key), in ``ordering_seq`` order.
ORDERING_INDEX = (
    "CREATE INDEX IF NOT EXISTS deliveries_ordering_queue ON deliveries"
    " (webhook_id, ordering_key, status, ordering_seq) WHERE ordering_key IS NOT NULL"
)


def _0011_webhook_filters_headers_auth_ordering() -> None:
    """Webhooks get a payload filter, extra headers, endpoint auth and fifo ordering; their
    deliveries a queue (``ordering_key``) and a position in it (``ordering_seq``).

    The position comes from the database on insert, so that it follows commit order across
    API processes whatever their clocks: a sequence on PostgreSQL, the row's ``rowid`` on
    SQLite (one writer at a time). The routes version now also moves with a webhook's filter
    and ordering, which the publish path reads from the routes cache.
    """
    _add_columns(
        "webhooks",
        {
            "payload_filter": "TEXT",
            "headers": "TEXT",
            "auth": "TEXT",
            "ordering": "VARCHAR(20) NOT NULL DEFAULT 'none'",
            "ordering_key": "VARCHAR(200)",
        },
    )
    _add_columns("deliveries", {"ordering_key": "VARCHAR(255)", "ordering_seq": "BIGINT"})
    if isinstance(database.obj, peewee.PostgresqlDatabase):
        database.execute_sql("CREATE SEQUENCE IF NOT EXISTS deliveries_ordering_seq")
        database.execute_sql(
            "ALTER TABLE deliveries ALTER COLUMN ordering_seq"
            " SET DEFAULT nextval('deliveries_ordering_seq')"
        )
    else:
        database.execute_sql(
            "CREATE TRIGGER IF NOT EXISTS deliveries_ordering_seq AFTER INSERT ON deliveries"
            " FOR EACH ROW WHEN NEW.ordering_key IS NOT NULL BEGIN"
            " UPDATE deliveries SET ordering_seq = NEW.rowid WHERE rowid = NEW.rowid; END"
        )
    database.execute_sql(ORDERING_INDEX)
    routed = ("payload_filter", "ordering", "ordering_key")
    _route_triggers("webhooks", (*ROUTE_COLUMNS["webhooks"], *routed))


def _0012_event_erasure_and_tenant_retention() -> None:
    """events.erased_at (a GDPR erasure keeps the event's id, type and time), tenants.retention
    (per-tenant periods), and the indexes per-tenant retention prunes logs and audit by."""
    _add_columns("events", {"erased_at": "TIMESTAMP"})
    _add_columns("tenants", {"retention": "TEXT"})
    for table in ("integration_logs", "audit_log"):
        database.execute_sql(
            f"CREATE INDEX IF NOT EXISTS {table}_tenant_id_created_at ON {table}"
            " (tenant_id, created_at)"
        )


def _0013_console_sessions() -> None:
    """console_sessions: portal links and the cookies they become, console sign-ins."""
    database.create_tables(models.CONSOLE_MODELS, safe=True)


MIGRATIONS: list[tuple[str, Callable[[], None]]] = [
    ("0001_foundation", _0001_foundation),
    ("0002_events_and_webhooks", _0002_events_and_webhooks),
    ("0003_oauth_tokens_and_sso_identities", _0003_oauth_tokens_and_sso_identities),
    ("0004_event_request_ids", _0004_event_request_ids),
    ("0005_alerts", _0005_alerts),
    ("0006_webhook_failing_since", _0006_webhook_failing_since),
    ("0007_history_indexes", _0007_history_indexes),
    ("0008_event_routes_version", _0008_event_routes_version),
    ("0009_tenants", _0009_tenants),
    ("0010_event_type_schemas", _0010_event_type_schemas),
    ("0011_webhook_filters_headers_auth_ordering", _0011_webhook_filters_headers_auth_ordering),
    ("0012_event_erasure_and_tenant_retention", _0012_event_erasure_and_tenant_retention),
    ("0013_console_sessions", _0013_console_sessions),
]


#: Names migrations were recorded under before they were named by what they do alone
#: (0.1.0 recorded these): an upgrade records them under today's names.
RENAMED = {
    "0003_i12_oauth_tokens_and_sso_identities": "0003_oauth_tokens_and_sso_identities",
    "0004_i13_event_request_ids": "0004_event_request_ids",
    "0005_i13_alerts": "0005_alerts",
    "0006_i9_webhook_failing_since": "0006_webhook_failing_since",
    "0007_i9_history_indexes": "0007_history_indexes",
    "0008_i14_event_routes_version": "0008_event_routes_version",
}


def upgrade() -> list[str]:
    """Apply pending migrations in order, each in its own transaction; return their names."""
    applied: list[str] = []
    with database.connection_context():
        database.create_tables([SchemaMigration])
        with database.atomic():
            for old, new in RENAMED.items():
                SchemaMigration.update(version=new).where(SchemaMigration.version == old).execute()
        done = {row.version for row in SchemaMigration.select()}
        for version, migrate in MIGRATIONS:
            if version in done:
                continue
            with database.atomic():
                migrate()
                SchemaMigration.create(version=version)
            applied.append(version)
    return applied
