"""``flask --app app …`` commands: db upgrade, create-admin, openapi write, dev."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from app import migrations
from app.auth.access import ROLE_SCOPES, bump_auth_epoch
from app.auth.issuing import issue_key
from app.auth.keys import hash_secret
from app.db import database
from app.models import User

db_cli = AppGroup("db", help="Database schema commands.")
openapi_cli = AppGroup("openapi", help="OpenAPI document commands.")

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations."""
    applied = migrations.upgrade()
    click.echo("applied: " + ", ".join(applied) if applied else "database is up to date")


def ensure_admin(email: str, password: str | None) -> tuple[User, str | None]:
    """Create the admin user if missing; return it and the password if one was generated."""
    email = email.strip().lower()
    user = User.get_or_none(User.email == email)
    generated = None
    if user is None:
        if password is None:
            password = generated = secrets.token_urlsafe(18)
        user = User.create(
            email=email,
            password_hash=hash_secret(password, current_app.config["BCRYPT_ROUNDS"]),
            role="admin",
        )
    else:
        # An existing member or disabled account is promoted: the key printed must work as admin.
        if password is not None:
            user.password_hash = hash_secret(password, current_app.config["BCRYPT_ROUNDS"])
        user.role = "admin"
        user.disabled = False
        user.save()
        bump_auth_epoch()  # cached keys of this user must see the new role
    return user, generated


def new_admin_key(user: User, name: str) -> str:
    """Issue an admin-scoped key for ``user`` and return its secret."""
    _, secret = issue_key(name=name, owner=user, permissions=sorted(ROLE_SCOPES["admin"]))
    return secret


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


@openapi_cli.command("write")
@click.option("--output", type=click.Path(path_type=Path), default=SPEC_PATH, show_default=True)
def openapi_write(output: Path) -> None:
    """Write the live OpenAPI document to openapi/openapi.json."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_spec() + "\n")
    click.echo(f"wrote {output}")


def render_spec() -> str:
    """The live OpenAPI document as canonical, stable JSON."""
    spec = current_app.extensions["api"].spec.to_dict()
    return json.dumps(spec, indent=2, sort_keys=True)


def init_app(app: Flask) -> None:
    """Register the CLI commands."""
    from app.devserver import dev_command

    app.cli.add_command(db_cli)
    app.cli.add_command(openapi_cli)
    app.cli.add_command(create_admin)
    app.cli.add_command(dev_command)
