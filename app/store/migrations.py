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


MIGRATIONS: list[tuple[str, Callable[[], None]]] = [
    ("0001_foundation", _0001_foundation),
    ("0002_events_and_webhooks", _0002_events_and_webhooks),
    ("0003_i12_oauth_tokens_and_sso_identities", _0003_i12_oauth_tokens_and_sso_identities),
    ("0004_i13_event_request_ids", _0004_i13_event_request_ids),
    ("0005_i13_alerts", _0005_i13_alerts),
    ("0006_i9_webhook_failing_since", _0006_i9_webhook_failing_since),
    ("0007_i9_history_indexes", _0007_i9_history_indexes),
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
