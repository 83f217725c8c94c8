"""The database's two roles: the app's, which may only add to the trail, and the owner's.

The app serves as the role of DATABASE_URL. Migrations (`flask db upgrade`, the boot) and
retention (`flask audit purge`) connect as the owner of the tables, DATABASE_ADMIN_URL
(default: DATABASE_URL itself, a single-role setup). The append-only triggers stop honest
mistakes only: whoever owns a table may disable them, and anyone may insert a purge permit.
So on PostgreSQL, when the two URLs name different roles, every `flask db upgrade` ends by
giving the app's role exactly APP_PRIVILEGES, and nothing else in the schema: whatever SQL
reaches the database as the app, it cannot change, delete or empty the trail.
"""

import sqlalchemy as sa
from flask import Flask

from backend.extensions import db

# The Flask-SQLAlchemy bind of DATABASE_ADMIN_URL, when it differs from DATABASE_URL.
OWNER_BIND = "owner"

# What the app's role may do, table by table; a table not named here it cannot touch at all
# (audit_purge_permit, above all). Sequences: USAGE only, for the serial ids.
APP_PRIVILEGES = {
    "audit_log": "SELECT, INSERT",
    "audit_checkpoint": "SELECT, INSERT",
    # The writer locks the head (SELECT ... FOR UPDATE needs UPDATE) and moves it.
    "audit_chain": "SELECT, UPDATE",
    "audit_tree_node": "SELECT, INSERT",
    "audit_tree_tile": "SELECT, INSERT",
    "audit_tree_head": "SELECT, INSERT",
    # The first process to sign with a new key lists it and retires the others (signing.py).
    "audit_signing_key": "SELECT, INSERT, UPDATE",
    "users": "SELECT, INSERT, UPDATE, DELETE",
    "tokens": "SELECT, INSERT, UPDATE, DELETE",
    "login_throttles": "SELECT, INSERT, UPDATE, DELETE",
    # The relay (`flask audit relay`, as the app's role) keeps its sinks' cursors.
    "audit_sink_cursor": "SELECT, INSERT, UPDATE",
    "alembic_version": "SELECT",  # /readyz compares it with the latest migration
}
# The functions the app's role calls, granted by name: where the owner took EXECUTE from
# PUBLIC (as some hardening guides advise), the writer could not append. Each runs with its
# caller's rights, so it lets the role do nothing APP_PRIVILEGES does not.
APP_FUNCTIONS = ("audit_append(json, json, json, json, json)",)  # migration 0013


def add_owner_bind(app: Flask) -> None:
    """Give DATABASE_ADMIN_URL a Flask-SQLAlchemy bind of its own when it differs from
    DATABASE_URL (before `db.init_app`, which makes its engine; it connects only when used)."""
    admin_url = app.config["DATABASE_ADMIN_URL"]
    if admin_url != app.config["SQLALCHEMY_DATABASE_URI"]:
        app.config.setdefault("SQLALCHEMY_BINDS", {})[OWNER_BIND] = admin_url


def owner_engine() -> sa.Engine:
    """The current app's engine of the tables' owner (DATABASE_ADMIN_URL): migrations and
    retention, the only work that may change or delete the trail."""
    return db.engines.get(OWNER_BIND, db.engine)


def app_role(app: Flask) -> str | None:
    """The PostgreSQL role the app serves as, when it is not the owner's (None: one role)."""
    app_url = sa.make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    owner_url = sa.make_url(app.config["DATABASE_ADMIN_URL"])
    if app_url.get_backend_name() != "postgresql" or not app_url.username:
        return None
    return app_url.username if app_url.username != owner_url.username else None


def grant_app_privileges(connection: sa.Connection, role: str) -> None:
    """Make the privileges of `role` on the current schema exactly APP_PRIVILEGES (as the
    tables' owner, in the caller's transaction): anything granted before is revoked first."""
    quote = connection.dialect.identifier_preparer.quote
    schema = quote(connection.exec_driver_sql("SELECT current_schema()").scalar_one())
    role = quote(role)
    existing = set(sa.inspect(connection).get_table_names())
    statements = [
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {role}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
    ]
    statements += [
        f"GRANT {privileges} ON {schema}.{quote(table)} TO {role}"
        for table, privileges in APP_PRIVILEGES.items()
        if table in existing
    ]
    statements += [
        f"GRANT EXECUTE ON FUNCTION {schema}.{function} TO {role}"
        for function in APP_FUNCTIONS
        if connection.scalar(sa.text("SELECT to_regprocedure(:name)"), {"name": function})
    ]
    for statement in statements:
        connection.exec_driver_sql(statement)
