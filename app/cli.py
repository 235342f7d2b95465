"""``flask --app app …`` commands: db, create-admin, set-password, openapi, retention, connector,
dev."""

from __future__ import annotations

import json
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from app.auth.issuing import ensure_admin, new_admin_key
from app.auth.keys import hash_secret
from app.connectors.scaffold import ScaffoldError, new_plugin
from app.devserver import dev_command
from app.store import migrations
from app.store.db import database
from app.store.models import User
from app.store.retention import KINDS, run_retention

db_cli = AppGroup("db", help="Database schema commands.")
openapi_cli = AppGroup("openapi", help="OpenAPI document commands.")
retention_cli = AppGroup("retention", help="History retention commands.")
connector_cli = AppGroup("connector", help="Connector plugin commands.")

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations."""
    applied = migrations.upgrade()
    click.echo("applied: " + ", ".join(applied) if applied else "database is up to date")


@click.command("create-admin")
@click.argument("email")
@click.option("--password", help="Set this password (generated and printed when omitted).")
@with_appcontext
def create_admin(email: str, password: str | None) -> None:
    """Create (or update) an admin user and print a new admin API key as the last line."""
    migrations.upgrade()
    with database.connection_context(), database.atomic():
        user, generated = ensure_admin(email, password)
        secret = new_admin_key(user, "created by create-admin")
    if generated:
        click.echo(f"password for {user.email}: {generated}")
    click.echo(secret)


@click.command("set-password")
@click.argument("email")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@with_appcontext
def set_password(email: str, password: str) -> None:
    """Set a user's password (users created by SSO have none until one is set)."""
    if not 8 <= len(password.encode()) <= 72:
        raise click.BadParameter("must be 8 to 72 bytes long", param_hint="--password")
    with database.connection_context():
        rounds = current_app.config["BCRYPT_ROUNDS"]
        updated = (
            User.update(password_hash=hash_secret(password, rounds))
            .where(User.email == email.strip().lower())
            .execute()
        )
    if not updated:
        raise click.ClickException(f"no user {email!r}")
    click.echo(f"password set for {email.strip().lower()}")


@retention_cli.command("run")
def retention_run() -> None:
    """Prune history older than the SWITCHBOARD_RETENTION_DAYS_* settings, in batches."""
    deleted = run_retention(current_app.config)
    for kind, count in deleted.items():
        click.echo(f"{kind}: {count} deleted")
    if not set(deleted) & set(KINDS):
        click.echo("retention is off for every kind of history")


@openapi_cli.command("write")
@click.option("--output", type=click.Path(path_type=Path), default=SPEC_PATH, show_default=True)
def openapi_write(output: Path) -> None:
    """Write the live OpenAPI document to openapi/openapi.json."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_spec() + "\n")
    click.echo(f"wrote {output}")


@connector_cli.command("new", with_appcontext=False)
@click.argument("name")
@click.option(
    "--dir",
    "parent",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The folder to create the package in.",
)
def connector_new(name: str, parent: Path) -> None:
    """Write switchboard-NAME/, a connector plugin package that passes its own tests."""
    try:
        root = new_plugin(name, parent)
    except ScaffoldError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"created {root}:")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        click.echo(f"  {path.relative_to(root)}")
    click.echo("next, in an environment with Switchboard (pip install -e '<switchboard>[test]'):")
    click.echo(f"  cd {root} && python -m pytest")
    click.echo(f"then pip install -e {root} into Switchboard's environment and restart it")


def render_spec() -> str:
    """The live OpenAPI document as canonical, stable JSON."""
    spec = current_app.extensions["api"].spec.to_dict()
    return json.dumps(spec, indent=2, sort_keys=True)


def init_app(app: Flask) -> None:
    """Register the CLI commands."""
    app.cli.add_command(db_cli)
    app.cli.add_command(openapi_cli)
    app.cli.add_command(retention_cli)
    app.cli.add_command(connector_cli)
    app.cli.add_command(create_admin)
    app.cli.add_command(set_password)
    app.cli.add_command(dev_command)
