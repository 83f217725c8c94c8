"""Alembic environment for Flask-Migrate: the app's engine and its models' metadata."""

import logging
from logging.config import fileConfig

from alembic import context
from flask import current_app

from backend.roles import app_role, grant_app_privileges, owner_engine

config = context.config
# Keep the app's loggers alive when migrations run inside a process that already has them.
fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger("alembic.env")

db = current_app.extensions["migrate"].db
# Migrations run as the tables' owner (DATABASE_ADMIN_URL), never as the app's own role.
engine = owner_engine()
config.set_main_option(
    "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
)


def run_migrations_offline():
    """Emit SQL to standard output (`flask db upgrade --sql`) without a database."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=db.metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    """Run the migrations against the app's database, as its owner; then give the app's own
    role, if it has one, exactly its privileges (backend/roles.py), on every run: tables a
    migration made are covered at once, and anything granted by hand is taken back."""

    def process_revision_directives(context, revision, directives):
        # `flask db migrate` with no model changes writes no empty revision.
        if getattr(config.cmd_opts, "autogenerate", False) and directives[0].upgrade_ops.is_empty():
            directives[:] = []
            logger.info("No changes in schema detected.")

    conf_args = dict(current_app.extensions["migrate"].configure_args)
    conf_args.setdefault("process_revision_directives", process_revision_directives)
    role = app_role(current_app)
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # A batch migration rebuilds a table on SQLite (a copy, DROP TABLE, RENAME), which
            # enforced foreign keys refuse while another table refers to it (`tokens` to
            # `users`). SQLite's own procedure for schema changes: enforcement off outside any
            # transaction, the changes, PRAGMA foreign_key_check, enforcement on again.
            _sqlite_pragma(connection, "foreign_keys=OFF")
        try:
            context.configure(connection=connection, target_metadata=db.metadata, **conf_args)
            with context.begin_transaction():
                context.run_migrations()
                if sqlite and (
                    broken := connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                ):
                    raise RuntimeError(
                        f"the migrations left rows whose foreign keys fail: {broken}"
                    )
                if role:
                    grant_app_privileges(connection, role)
        finally:
            if sqlite:  # the connection goes back to the app's pool, a failed migration's too
                _sqlite_pragma(connection, "foreign_keys=ON")


def _sqlite_pragma(connection, setting: str) -> None:
    """`PRAGMA setting` on its own, outside any transaction, where SQLite applies it."""
    connection.exec_driver_sql(f"PRAGMA {setting}")
    connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
