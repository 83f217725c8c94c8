"""The service's start, in the container and with `make run`: migrate, admin, then gunicorn.

    python -m backend.boot [gunicorn options]

run from the directory that holds wsgi.py. It does what `flask db upgrade` (as the tables'
owner, DATABASE_ADMIN_URL) and `flask users ensure-admin` do, then replaces itself with gunicorn
(exec), without the owner's URL, so the container's stop signal goes straight to gunicorn's
master. Several copies may start at once against one
PostgreSQL (scaling out): an advisory lock lets one migrate while the others wait for it.
"""

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import click
import sqlalchemy as sa
from flask import Flask
from flask_migrate import upgrade

from backend import dispose_engines
from backend.audit.signing import NEW_KEY_NOTICE
from backend.extensions import db
from config import APP_LOAD_ERROR, ConfigError

GUNICORN_CONFIG = "python:backend.gunicorn_conf"
# Any 64-bit number, the same in every copy of the service: "audit_bo" in ASCII.
BOOT_LOCK = 0x6175_6469_745F_626F
BOOT_LOCK_POLL = 0.5  # seconds between tries while another boot migrates


def main(gunicorn_options: list[str]) -> int:
    """Migrate and make sure an admin exists, then exec gunicorn; return an exit code if not."""
    try:
        from backend import gunicorn_conf  # noqa: F401  (its settings, checked before migrating)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return APP_LOAD_ERROR
    # The very app gunicorn will serve; a bad setting exits here with its one-line message.
    from wsgi import app

    try:
        prepare(app)
    except click.ClickException as error:
        error.show()
        return error.exit_code
    finally:
        dispose_engines(app)
    # The owner's URL was for the migrations: the served processes must not hold it (empty, not
    # unset, so that a .env file cannot bring it back; config.py reads empty as unset).
    os.environ["DATABASE_ADMIN_URL"] = ""
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        GUNICORN_CONFIG,
        *gunicorn_options,
        "wsgi:app",
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def prepare(app: Flask) -> None:
    """`flask db upgrade`, `flask audit maintain`, then `flask users ensure-admin`, one boot at
    a time."""
    with app.app_context(), one_boot_at_a_time():
        upgrade()
        try:
            app.cli.main(["audit", "maintain"], prog_name="flask", standalone_mode=False)
        except click.ClickException as error:
            # Not fatal: rows of a month not made yet go to the default partition, and the
            # next run (cron, the next boot) makes it.
            error.show()
        app.cli.main(["users", "ensure-admin"], prog_name="flask", standalone_mode=False)
    made = app.extensions["audit_writer"].signer.made
    if made:  # the one-line notice of a key made on first boot
        print(NEW_KEY_NOTICE % made, flush=True)


@contextmanager
def one_boot_at_a_time() -> Iterator[None]:
    """On PostgreSQL, hold a session advisory lock for the block (SQLite: one machine, no-op)."""
    if db.engine.dialect.name != "postgresql":
        yield
        return
    # Waiting boots poll with pg_try_advisory_lock, outside any transaction: one blocked in
    # pg_advisory_lock would hold a snapshot, and the CREATE INDEX CONCURRENTLY of a migration
    # (0005) waits for every snapshot older than it: the two would wait for each other.
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        while not connection.scalar(sa.select(sa.func.pg_try_advisory_lock(BOOT_LOCK))):
            time.sleep(BOOT_LOCK_POLL)
        try:
            yield
        finally:
            connection.execute(sa.select(sa.func.pg_advisory_unlock(BOOT_LOCK)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
