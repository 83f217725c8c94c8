"""Whether the database can serve (it answers, and its schema is at the latest migration), and
the one line that tells a person what to do when it cannot.

Every `flask` command and the boot (python -m backend.boot) end with that line and exit 1,
instead of a traceback, when the database is unreachable or not migrated. Our commands check
first (DatabaseCommands), so that none starts work on a schema older than the code; for the
rest (Flask-Migrate's `flask db ...`, the boot's migration), `install()` puts `report` in front
of Python's own handler of an uncaught exception. Any other exception keeps its traceback:
that one is a bug to report, not a situation to act on.
"""

import sys
from collections.abc import Callable
from functools import cache, partial
from types import TracebackType

import click
import psycopg
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from flask import Flask
from flask.cli import AppGroup, ScriptInfo

from backend.errors import database_away
from backend.extensions import db, migrate

UPGRADE = "run `flask db upgrade`"


def schema_revisions(connection: sa.Connection) -> set[str]:
    """The revisions the database's schema is at (empty: never migrated)."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return set()
    return set(connection.scalars(sa.text("SELECT version_num FROM alembic_version")))


@cache
def migration_heads(directory: str) -> set[str]:
    """The head revisions of the migration scripts shipped with this code."""
    return set(ScriptDirectory.from_config(migrate.get_config(directory)).get_heads())


def not_migrated(place: str, revisions: set[str], heads: set[str]) -> str:
    """What to say of the database at `place`, whose schema is at `revisions`, when the code
    needs `heads`."""
    if not revisions:
        return f"the database at {place} has no schema yet: {UPGRADE}"
    return (
        f"the database at {place} is at migration {', '.join(sorted(revisions))}, not the"
        f" latest ({', '.join(sorted(heads))}): {UPGRADE}"
    )


def where(url: sa.URL) -> str:
    """`HOST:PORT` of a server's URL, the file of a SQLite URL; never the password."""
    if url.get_backend_name() == "sqlite":
        return url.database or "(in memory)"
    port = url.port or {"postgresql": 5432}.get(url.get_backend_name(), "")
    return f"{url.host or 'localhost'}:{port}"


def unreachable(error: BaseException) -> bool:
    """Whether `error` says no connection could be had: a server that is away, or a SQLite
    file that cannot be opened."""
    if database_away(error):
        return True
    orig = getattr(error, "orig", None)
    return isinstance(error, sa.exc.OperationalError) and "unable to open" in str(orig)


# Errors the data causes, never a schema behind the code: a migration that fails on one leaves
# the database between migrations, and "run `flask db upgrade`" would hide why it failed.
DATA_ERRORS = (sa.exc.IntegrityError, sa.exc.DataError, psycopg.IntegrityError, psycopg.DataError)


def problem(app: Flask, error: BaseException) -> str | None:
    """The one line for a database `error` a person can act on, or None for any other."""
    if not isinstance(error, sa.exc.DBAPIError | psycopg.Error) or isinstance(error, DATA_ERRORS):
        return None
    if unreachable(error):
        return f"cannot reach the database at {where(database_url(app))}: {first_line(error)}"
    try:
        return unusable(app)
    except sa.exc.SQLAlchemyError:
        return None


def unusable(app: Flask) -> str | None:
    """Why the database of `app` cannot serve this code (unreachable, refusing the login, no
    such database, not at the latest migration), in one line; None when it can."""
    try:
        with app.app_context():
            heads = migration_heads(app.extensions["migrate"].directory)
            with db.engine.connect() as connection:
                revisions = schema_revisions(connection)
    except sa.exc.OperationalError as failure:
        return f"cannot reach the database at {where(database_url(app))}: {first_line(failure)}"
    if revisions == heads:
        return None
    return not_migrated(where(database_url(app)), revisions, heads)


def database_url(app: Flask) -> sa.URL:
    return sa.make_url(app.config["SQLALCHEMY_DATABASE_URI"])


class NeedsMigratedDatabase(click.Command):
    """A command that first makes sure the database is reachable and migrated, and else ends
    with the one line that says so (exit 1) before doing anything. `--help` needs no
    database: click answers it before invoking the command."""

    def invoke(self, ctx: click.Context):
        app = ctx.ensure_object(ScriptInfo).load_app()
        if line := unusable(app):
            raise click.ClickException(line)
        return super().invoke(ctx)


class DatabaseCommands(AppGroup):
    """`flask users ...`, `flask audit ...`: each command, in nested groups too, checks the
    database first (NeedsMigratedDatabase)."""

    command_class = NeedsMigratedDatabase
    group_class = type  # subgroups are DatabaseCommands too


def first_line(error: BaseException) -> str:
    """The driver's own message, first line only (SQLAlchemy adds the SQL and a link)."""
    message = str(getattr(error, "orig", None) or error).strip()
    return message.splitlines()[0] if message else type(error).__name__


def report(
    app: Flask,
    fallback: Callable,
    kind: type[BaseException],
    error: BaseException,
    traceback: TracebackType | None,
) -> None:
    """sys.excepthook: the one line and exit 1 for a database a person must fix, else
    Python's own report (`fallback`)."""
    try:
        line = problem(app, error)
    except Exception:  # never let the report hide the error itself
        line = None
    if line is None:
        fallback(kind, error, traceback)
        return
    print(f"Error: {line}", file=sys.stderr)  # as click says a ClickException
    sys.stderr.flush()
    sys.exit(1)


def install(app: Flask) -> None:
    """Report uncaught database errors of this process (a command, the boot) as one line."""
    sys.excepthook = partial(report, app, sys.excepthook)
