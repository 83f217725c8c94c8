"""Append-only in the database (issue 5, item 1).

Triggers refuse UPDATE, DELETE and (PostgreSQL) TRUNCATE on the trail and on its checkpoints,
whoever sends the SQL; the one way to delete is inside a transaction that holds a purge permit,
which is what `flask audit purge` does.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from backend.roles import owner_engine
from tests.helpers import PERMIT, aged_trail, make_trail, purge, table_rows, tampering

pytestmark = pytest.mark.settings(AUDIT_CHECKPOINT_EVERY="1")  # a checkpoint per row

TABLES = pytest.mark.parametrize("table", ["audit_log", "audit_checkpoint"])
CHANGE = {"audit_log": "track = 'rewritten'", "audit_checkpoint": "reason = 'rewritten'"}


def run_sql(app, *statements: str) -> None:
    """Raw SQL in one transaction of the tables' owner (whose mistakes the triggers stop; the
    app's own role may not even try: test_least_privilege.py)."""
    with app.app_context(), owner_engine().begin() as connection:
        for statement in statements:
            connection.execute(sa.text(statement))


@pytest.fixture
def trail(client) -> None:
    """Three rows, each with its checkpoint."""
    make_trail(client, 3)


@contextmanager
def refused(app, operation: str) -> Iterator[None]:
    """The block's SQL is refused by the trigger, and neither table has changed."""
    before = {table: table_rows(app, table) for table in CHANGE}
    assert all(before.values())
    with pytest.raises(sa.exc.DatabaseError, match=f"append-only: {operation} is not allowed"):
        yield
    assert {table: table_rows(app, table) for table in CHANGE} == before


@TABLES
def test_an_update_is_refused(app, trail, table):
    with refused(app, "UPDATE"):
        run_sql(app, f"UPDATE {table} SET {CHANGE[table]} WHERE id = 2")


@TABLES
def test_a_delete_is_refused(app, trail, table):
    with refused(app, "DELETE"):
        run_sql(app, f"DELETE FROM {table} WHERE id = 2")


@TABLES
def test_emptying_the_table_is_refused(app, trail, table):
    """TRUNCATE on PostgreSQL; on SQLite an unqualified DELETE, its "truncate optimisation"."""
    postgresql = app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")
    with refused(app, "TRUNCATE" if postgresql else "DELETE"):
        run_sql(app, f"TRUNCATE {table}" if postgresql else f"DELETE FROM {table}")


@TABLES
def test_a_purge_permit_does_not_allow_an_update(app, trail, table):
    with refused(app, "UPDATE"):
        run_sql(app, PERMIT, f"UPDATE {table} SET {CHANGE[table]} WHERE id = 2")


def test_a_delete_inside_a_transaction_holding_a_purge_permit_is_allowed(app, trail):
    """The mechanism itself; `flask audit purge` is its one user."""
    run_sql(app, PERMIT, "DELETE FROM audit_log WHERE id = 1", "DELETE FROM audit_purge_permit")
    assert [row.id for row in table_rows(app, "audit_log")] == [2, 3]


def test_another_transactions_purge_permit_allows_no_delete(app, trail):
    """While a purge holds its permit, a DELETE from any other transaction still fails (on
    SQLite, one writer at a time, it cannot even begin: it is told so at once)."""
    url = app.config["DATABASE_ADMIN_URL"]
    sqlite = url.startswith("sqlite")
    other = sa.create_engine(url, connect_args={"timeout": 0} if sqlite else {})
    with app.app_context(), owner_engine().connect() as purging:
        purging.execute(sa.text(PERMIT))  # not committed: only this transaction holds it
        try:
            with (
                pytest.raises(
                    sa.exc.DatabaseError, match="database is locked" if sqlite else "append-only"
                ),
                other.begin() as connection,
            ):
                connection.execute(sa.text("DELETE FROM audit_log WHERE id = 1"))
        finally:
            other.dispose()
        purging.rollback()
    assert [row.id for row in table_rows(app, "audit_log")] == [1, 2, 3]


def test_tampering_in_the_tests_restores_the_protection(app, trail):
    with tampering(app) as connection:
        connection.execute(sa.text("UPDATE audit_log SET track = 'rewritten' WHERE id = 3"))
    with refused(app, "UPDATE"):
        run_sql(app, "UPDATE audit_log SET track = 'again' WHERE id = 2")


# -- the sanctioned path ----------------------------------------------------------------------


def test_flask_audit_purge_deletes_through_the_triggers(app, client, runner):
    aged_trail(client, old=2, new=1)
    result = purge(runner, "--yes")
    assert result.exit_code == 0, result.output
    assert [row.id for row in table_rows(app, "audit_log")] == [3, 4]


def test_flask_audit_purge_leaves_no_permit_behind(app, client, runner):
    aged_trail(client, old=2, new=1)
    purge(runner, "--yes")
    assert table_rows(app, "audit_purge_permit") == []
    with refused(app, "DELETE"):
        run_sql(app, "DELETE FROM audit_log WHERE id = 3")
