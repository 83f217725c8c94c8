"""`flask users list`, `set-password NAME`, `disable NAME`, `enable NAME`: what an admin does
through /v1/users and /v1/me/password, for the operator at the server (a lost admin password
included). The same functions of backend/accounts.py do the work, so tokens are revoked as
the API revokes them, and each change is a row of the trail (source `cli`, the OS account
that ran the command named), as the API's are.
"""

import sys

import click
import sqlalchemy as sa
from marshmallow import ValidationError

from backend import accounts
from backend.audit.events import REDACTED
from backend.cli import field_problems, record_cli, users
from backend.clock import rfc3339
from backend.extensions import db
from backend.models import User, fold_username
from backend.schemas import NewPasswordSchema


@users.command("list")
def list_command() -> None:
    """Every user, oldest first: id, name, role, state, created."""
    found = db.session.scalars(sa.select(User).order_by(User.id)).all()
    if not found:
        click.echo("no users yet: flask users create NAME --admin")
        return
    width = max(len(user.username) for user in found)
    for user in found:
        role = "admin" if user.is_admin else "user"
        state = "disabled" if user.disabled else "active"
        click.echo(
            f"{user.id:>6}  {user.username:<{width}}  {role:<5}  {state:<8}"
            f"  created {rfc3339(user.created_at)}"
        )


@users.command("set-password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def set_password_command(name: str, password_stdin: bool) -> None:
    """Give NAME a new password (a lost one too) and revoke every token of theirs."""
    user = existing_user(name)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("New password", hide_input=True, confirmation_prompt=True)
    try:
        password = NewPasswordSchema().load({"password": password})["password"]
    except ValidationError as error:
        raise click.ClickException(field_problems(error)) from None
    revoked = accounts.change_password(user, password)
    record_cli(
        "password.change",
        track=f"set the password of {user.username}; tokens revoked: {revoked}",
        level="WARNING",
        target=accounts.user_target(user),
        changes={"password": [REDACTED, REDACTED]},
        details={"revoked_tokens": revoked},
    )
    record_revoked(user, revoked)
    click.echo(f"password of {user.username} set; {revoked} tokens revoked")


@users.command("disable")
@click.argument("name")
def disable_command(name: str) -> None:
    """Disable NAME: no login, and every token of theirs revoked at once."""
    set_disabled(existing_user(name), True)


@users.command("enable")
@click.argument("name")
def enable_command(name: str) -> None:
    """Let the disabled user NAME log in again."""
    set_disabled(existing_user(name), False)


def set_disabled(user: User, disabled: bool) -> None:
    """Disable or enable `user` as PATCH /v1/users/<id> does: a change is recorded, no change
    is only said."""
    action = "disable" if disabled else "enable"
    if user.disabled == disabled:
        click.echo(f"{user.username} is already {action}d; nothing changed")
        return
    revoked = accounts.set_disabled(user, disabled)
    track = f"{action}d user {user.username}" + (f"; tokens revoked: {revoked}" if disabled else "")
    record_cli(
        f"user.{action}",
        track=track,
        level="WARNING" if disabled else "INFO",
        target=accounts.user_target(user),
        changes={"disabled": [not disabled, disabled]},
    )
    record_revoked(user, revoked)
    click.echo(track)


def record_revoked(user: User, revoked: int) -> None:
    """`token.revoke` for the tokens an act revoked, when there were any (as the API does)."""
    if revoked:
        record_cli(
            "token.revoke",
            track=f"revoked {revoked} token{'' if revoked == 1 else 's'} of {user.username}",
            target=accounts.user_target(user),
            changes={"live_tokens": [revoked, 0]},
            details={"revoked_tokens": revoked},
        )


def existing_user(name: str) -> User:
    """The user called NAME, in any case (names are unique regardless of case); exit 1 if none."""
    user = db.session.scalar(sa.select(User).where(User.folded_username == fold_username(name)))
    if user is None:
        raise click.ClickException(f"no user is called {name!r} (flask users list names them)")
    return user
