"""Schema migrations: an ordered list, applied once each and recorded in ``schema_migrations``.

Add a new function at the end of ``MIGRATIONS``; never edit one that has shipped.
``flask --app app db upgrade`` (and the run command) applies the pending ones.
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


def _0003_i12_oauth_tokens_and_sso_identities() -> None:
    database.create_tables(models.OAUTH_MODELS, safe=True)


def _0004_i13_event_request_ids() -> None:
    """events.request_id: the API request that published an event (a fresh database has it)."""
    if "request_id" not in {column.name for column in database.get_columns("events")}:
        migrator = SchemaMigrator.from_database(database.obj)
        migrate(migrator.add_column("events", "request_id", models.Event.request_id))


def _0005_i13_alerts() -> None:
    database.create_tables(models.ALERT_MODELS, safe=True)


def _0006_i9_webhook_failing_since() -> None:
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


def _0007_i9_history_indexes() -> None:
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


def _0008_i14_event_routes_version() -> None:
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
        database.execute_sql("CREATE SEQUENCE IF NOT EXISTS event_routes_version_seq START 2")
        bump = "UPDATE event_routes_version SET version = nextval('event_routes_version_seq')"
    else:
        bump = "UPDATE event_routes_version SET version = random()"
    if postgres:
        database.execute_sql(
            "CREATE OR REPLACE FUNCTION bump_event_routes_version() RETURNS trigger"
            f" LANGUAGE plpgsql AS $$ BEGIN {bump}; RETURN NULL; END $$"
        )
    for table, columns in ROUTE_COLUMNS.items():
        changed = " OR ".join(
            f"OLD.{c} IS DISTINCT FROM NEW.{c}" if postgres else f"OLD.{c} IS NOT NEW.{c}"
            for c in columns
        )
        triggers = {
            f"{table}_routes_insert": ("AFTER INSERT", ""),
            f"{table}_routes_delete": ("AFTER DELETE", ""),
            f"{table}_routes_update": (
                f"AFTER UPDATE OF {', '.join(columns)}",
                f"WHEN ({changed})",
            ),
        }
        if postgres:  # TRUNCATE fires no row trigger
            triggers[f"{table}_routes_truncate"] = ("AFTER TRUNCATE", "")
        for name, (timing, when) in triggers.items():
            if postgres:
                level = "STATEMENT" if "TRUNCATE" in timing else "ROW"
                database.execute_sql(f"DROP TRIGGER IF EXISTS {name} ON {table}")
                database.execute_sql(
                    f"CREATE TRIGGER {name} {timing} ON {table} FOR EACH {level} {when}"
                    " EXECUTE FUNCTION bump_event_routes_version()"
                )
            else:
                database.execute_sql(
                    f"CREATE TRIGGER IF NOT EXISTS {name} {timing} ON {table} FOR EACH ROW"
                    f" {when} BEGIN {bump}; END"
                )


MIGRATIONS: list[tuple[str, Callable[[], None]]] = [
    ("0001_foundation", _0001_foundation),
    ("0002_events_and_webhooks", _0002_events_and_webhooks),
    ("0003_i12_oauth_tokens_and_sso_identities", _0003_i12_oauth_tokens_and_sso_identities),
    ("0004_i13_event_request_ids", _0004_i13_event_request_ids),
    ("0005_i13_alerts", _0005_i13_alerts),
    ("0006_i9_webhook_failing_since", _0006_i9_webhook_failing_since),
    ("0007_i9_history_indexes", _0007_i9_history_indexes),
    ("0008_i14_event_routes_version", _0008_i14_event_routes_version),
]


def upgrade() -> list[str]:
    """Apply pending migrations in order, each in its own transaction; return their names."""
    applied: list[str] = []
    with database.connection_context():
        database.create_tables([SchemaMigration])
        done = {row.version for row in SchemaMigration.select()}
        for version, migrate in MIGRATIONS:
            if version in done:
                continue
            with database.atomic():
                migrate()
                SchemaMigration.create(version=version)
            applied.append(version)
    return applied
