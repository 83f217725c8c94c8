"""Command-line tools: `flask users ...` and `flask audit ...`."""

import sys

import click
from flask import current_app
from flask.cli import AppGroup
from marshmallow import ValidationError

from backend.schemas import NewUserSchema
from backend.users import UsernameTaken, create_user, ensure_admin

users = AppGroup("users", help="Manage the users who can log in.")
audit = AppGroup("audit", help="Check, export and prune the audit trail.")


@users.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make the user an admin.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def create(name: str, admin: bool, password_stdin: bool) -> None:
    """Create the user NAME; prompts twice for the password unless --password-stdin."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    fields = valid_new_user(name, password, admin)
    try:
        user = create_user(fields["username"], fields["password"], fields["is_admin"])
    except UsernameTaken:
        raise click.ClickException(f"the username {name!r} is taken") from None
    click.echo(f"created {'admin' if user.is_admin else 'user'} {user.username}")


def valid_new_user(name: str, password: str, admin: bool) -> dict:
    """The user's fields checked by the API's own schema; exit with the bad fields named."""
    try:
        return NewUserSchema().load({"username": name, "password": password, "is_admin": admin})
    except ValidationError as error:
        problems = "; ".join(f"{field}: {' '.join(messages)}"
                             for field, messages in error.normalized_messages().items())
        raise click.ClickException(problems) from None


@users.command("ensure-admin")
def ensure_admin_command() -> None:
    """Create the admin from ADMIN_USERNAME/ADMIN_PASSWORD if absent (or `admin` on an empty db)."""
    username, password = current_app.config["ADMIN_USERNAME"], current_app.config["ADMIN_PASSWORD"]
    if username and password:
        valid_new_user(username, password, True)
    user, generated = ensure_admin(username, password)
    if user is None:
        return
    if generated is None:
        click.echo(f"created admin {user.username}")
    else:
        click.echo(f"created admin {user.username} with password {generated}"
                   " (shown once: write it down)")
